"""Data: synthetic cardiac phantoms, dataset loaders and the batch pipeline."""
