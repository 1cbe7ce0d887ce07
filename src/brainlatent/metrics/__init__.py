"""Evaluation metrics: perceptual features and distances, PPL, linear separability, image quality."""
