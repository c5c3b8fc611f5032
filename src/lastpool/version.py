"""Single source of the library version (saved into every model folder)."""

__version__ = "0.1.0"
