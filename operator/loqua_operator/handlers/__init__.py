"""Thin kopf handlers: translate kopf's kwargs to domain calls, and outcomes back to patches/Events."""
