"""UTC timestamps in the seed's format (``2025-01-15T10:30:00Z``): the project's one home for time
formats is ``loqua_common.timefmt``; these are the names the reference API uses."""

from __future__ import annotations

from loqua_common.timefmt import iso_seconds as iso
from loqua_common.timefmt import parse_iso, utcnow

__all__ = ["iso", "now_iso", "parse_iso", "utcnow"]


def now_iso() -> str:
    return iso(utcnow())
