"""Latent Bridge: Stable-Diffusion-class generation for Blender and any HTTP client."""

__version__ = "0.1.0"
