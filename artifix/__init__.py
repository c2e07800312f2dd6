"""artifix: find the generator units that cause GAN artifacts, remove them, and prove the result is better."""

__version__ = "0.1.0"
