"""Kubernetes Events, posted one way: kopf's own poster (batched, retried, never blocks a reconcile).

kopf 1.45 sets up its Event queue only inside per-object handler tasks; the sweep and the webhook
refreshes are tasks of their own. So the first handler call captures kopf's queue (``capture``), and
``post`` makes it current wherever it is called. Until then (no object handled yet) an Event is
logged at DEBUG and skipped: Events are best effort, the status carries the state.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf
from kopf._core.engines import posting  # pinned kopf version; tests/unit/test_operator_events.py

log = logging.getLogger("loqua_operator.events")
_captured: tuple[Any, Any] | None = None


def capture() -> None:
    """Called from a kopf handler: remember kopf's Event queue and its loop."""
    global _captured
    if _captured is None:
        with contextlib.suppress(LookupError):
            _captured = (posting.event_queue_loop_var.get(), posting.event_queue_var.get())


def post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        posting.event_queue_var.get()
    except LookupError:
        if _captured is None:
            log.debug("event %s skipped: kopf's poster is not reachable yet", reason)
            return
        posting.event_queue_loop_var.set(_captured[0])
        posting.event_queue_var.set(_captured[1])
    kopf.event(body, type=type_, reason=reason, message=message[:1024])
