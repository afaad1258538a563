"""The package's version, on the ground floor (provenance records it with every run)."""

__version__ = "0.1.0"  # the one place it is written (pyproject.toml reads it)
