"""Training loops: the attribute classifier and the GANs (checkpoints, resume, logs)."""
