"""Training parts used by train.py: losses, SAM, the LR schedule and the run log."""
