"""The LiveKit Agents tutor worker."""

__version__ = "0.1.0"
