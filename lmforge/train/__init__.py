"""Training: the Trainer subclass, metrics and checkpoints."""
