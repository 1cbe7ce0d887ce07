"""brainlatent: does a generative model's latent space disentangle clinical attributes of brain MRI?"""

__version__ = "0.1.0"
