"""The package version, in a module of its own (read by setup.py and the export metadata)."""

__version__ = "0.1.0"
