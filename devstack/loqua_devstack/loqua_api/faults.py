"""Fault injection, switched at run time through ``/admin/faults``.

A rule matches requests whose path starts with ``path_prefix`` (never ``/admin`` or ``/healthz``).
``latency_ms`` delays every matching request until the rules are cleared; ``status`` answers the next
``count`` matching requests (all of them when ``count`` is absent) with that status and the API's error
body, plus ``Retry-After`` when ``retry_after`` is given: whole seconds, or any header text (an HTTP
date, or garbage such as ``"²"`` - to see that clients survive it), sent as given.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

from loqua_devstack.loqua_api import validation as v
from loqua_devstack.loqua_api.errors import bad_request

EXEMPT_PREFIXES = ("/admin", "/healthz")
FAULT_KEYS = ("latency_ms", "status", "count", "retry_after", "path_prefix")
MAX_LATENCY_MS = 600_000


MAX_RETRY_AFTER_TEXT = 64


def _retry_after(spec: dict[str, Any]) -> int | str | None:
    value = spec.get("retry_after")
    if isinstance(value, str):
        if not value or len(value) > MAX_RETRY_AFTER_TEXT or not value.isprintable():
            raise bad_request(
                "INVALID_FIELD", f"retry_after text must be 1-{MAX_RETRY_AFTER_TEXT} printable characters"
            )
        return value
    number = v.number(spec, "retry_after", integer=True)
    return None if number is None else int(number)


@dataclass
class FaultRule:
    id: int
    path_prefix: str
    latency_ms: int = 0
    status: int | None = None
    remaining: int | None = None  # status answers left; None = until cleared
    retry_after: int | str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, path: str) -> bool:
        return path.startswith(self.path_prefix)


@dataclass(frozen=True)
class FaultDecision:
    latency_seconds: float
    rule: FaultRule | None  # the rule whose status answers this request


class FaultInjector:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(self, spec: dict[str, Any]) -> FaultRule:
        """Validate an admin request body and add its rule (raises ApiError 400)."""
        v.no_unknown_keys(spec, FAULT_KEYS, where="fault")
        latency = v.number(spec, "latency_ms", maximum=MAX_LATENCY_MS, integer=True) or 0
        status = v.number(spec, "status", minimum=400, maximum=599, integer=True)
        count = v.number(spec, "count", minimum=1, integer=True)
        retry_after = _retry_after(spec)
        prefix = v.text(spec, "path_prefix", required=False, max_len=1000) or "/api/"
        if not prefix.startswith("/"):
            raise bad_request("INVALID_FIELD", "path_prefix must start with /")
        if status is None and (count is not None or retry_after is not None):
            raise bad_request("INVALID_FIELD", "count and retry_after need a status")
        if status is None and not latency:
            raise bad_request("MISSING_FIELD", "a fault needs latency_ms or status")
        rule = FaultRule(
            id=next(self._ids),
            path_prefix=prefix,
            latency_ms=int(latency),
            status=None if status is None else int(status),
            remaining=None if count is None else int(count),
            retry_after=retry_after,
        )
        self._rules.append(rule)
        return rule

    def clear(self) -> int:
        cleared = len(self._rules)
        self._rules.clear()
        return cleared

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [r for r in self._rules if r.id != rule_id]
        return len(self._rules) < before

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def decide(self, path: str) -> FaultDecision:
        """Latency and status for one request; consumes one answer of the status rule it picks."""
        if path.startswith(EXEMPT_PREFIXES):
            return FaultDecision(0.0, None)
        matching = [r for r in self._rules if r.matches(path)]
        latency = max((r.latency_ms for r in matching), default=0) / 1000
        chosen = next((r for r in matching if r.status is not None and r.remaining != 0), None)
        if chosen is not None and chosen.remaining is not None:
            chosen.remaining -= 1
            if chosen.remaining == 0 and not chosen.latency_ms:
                self._rules.remove(chosen)
        return FaultDecision(latency, chosen)
