"""Registration baselines without a network (Elastix)."""
