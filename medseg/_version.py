"""The installed medseg version (a leaf module: anything may import it without pulling in the package)."""

__version__ = "0.1.0"
