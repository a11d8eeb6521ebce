"""sandboxctl: run AI coding agents and their commands inside a layered Linux sandbox."""

__version__ = "0.1.0"
