"""Training: the train state, the compiled steps, the data feed, checkpoints and the training loop
(train_and_evaluate, train_and_evaluate_together, evaluate_checkpoint)."""
