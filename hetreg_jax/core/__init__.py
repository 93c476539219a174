"""The method itself: spatial transforms, losses, the methods (which loss and which steps) and the
metrics. Imports only hetreg_jax.base."""
