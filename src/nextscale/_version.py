"""The package version, importable without importing the package's modules (``nextscale.hub``
reads it; ``nextscale/__init__`` re-exports it)."""

__version__ = "0.1.0"
