"""Retraining from labelled mail: the job, its holdout and gate, the one-trainer lock, and the scheduler."""
