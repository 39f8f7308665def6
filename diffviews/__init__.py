"""DiffViews: look inside diffusion image models."""

__version__ = "0.1.0"
