"""The AgentDispatch operator (kopf)."""

__version__ = "0.1.0"
