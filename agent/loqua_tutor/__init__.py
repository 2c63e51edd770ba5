"""The LiveKit Agents tutor worker."""
