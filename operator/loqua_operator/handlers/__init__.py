"""Thin kopf handlers: translate kopf's kwargs to domain calls, and outcomes back to patches/Events.

All handlers register on one registry, which ``app.run`` hands to kopf.
"""

import kopf

registry = kopf.OperatorRegistry()
