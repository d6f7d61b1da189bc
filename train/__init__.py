"""Trainer: streaming WebDataset pipeline, losses, loop, checkpoints."""
