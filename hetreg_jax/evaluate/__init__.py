"""Evaluation of registrations: test-set predictions and scores, uncertainty scores, the paired
comparison of runs and the evaluation figures."""
