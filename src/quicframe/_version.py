"""The single source of quicframe's version."""

__version__ = "0.1.0.dev0"
