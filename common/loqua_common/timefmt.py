"""UTC timestamps as the project writes and reads them - one home for the formats.

- :func:`iso_seconds`: ``2025-01-15T10:30:00Z`` - seed 003's timestamps and Kubernetes'
  ``metav1.Time`` (conditions, status fields);
- :func:`iso_micro`: ``2025-01-15T10:30:00.123456Z`` - Kubernetes' ``metav1.MicroTime`` (Lease
  renew times, Event times);
- :func:`parse_iso`: either of them (or any ISO 8601 with an offset) back to an aware UTC datetime.

The log format's millisecond timestamps are rendered by the log handler itself, cached per second
(a hot path measured by ``make bench``).
"""

from __future__ import annotations

import datetime as dt


def utcnow(*, microseconds: bool = False) -> dt.datetime:
    now = dt.datetime.now(dt.UTC)
    return now if microseconds else now.replace(microsecond=0)


def iso_seconds(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micro(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> dt.datetime:
    """An aware UTC datetime; a value without an offset is taken as UTC. Raises ValueError."""
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
