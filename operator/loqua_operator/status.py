"""Pure status derivation: phases and conditions shaped like metav1.Condition."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from loqua_common import timefmt

READY = "Ready"
DISPATCHED = "Dispatched"
MAX_MESSAGE = 1024  # keep conditions readable and objects small


class Phase(StrEnum):
    PENDING = "Pending"
    DISPATCHED = "Dispatched"
    ACTIVE = "Active"
    IDLE = "Idle"
    FAILED = "Failed"


def iso(ts: dt.datetime) -> str:
    """RFC 3339 with a Z, second precision, the way Kubernetes writes metav1.Time."""
    return timefmt.iso_seconds(ts)


def parse_iso(value: str | None) -> dt.datetime | None:
    return timefmt.parse_iso(value) if value else None


def condition(
    existing: list[dict[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Return ``existing`` with condition ``type_`` set; lastTransitionTime moves only on a change."""
    status_str = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in existing or []:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != status_str
        out.append(
            {
                "type": type_,
                "status": status_str,
                "reason": reason,
                "message": message[:MAX_MESSAGE],
                "lastTransitionTime": iso(now) if changed else cond.get("lastTransitionTime", iso(now)),
                "observedGeneration": generation,
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": status_str,
                "reason": reason,
                "message": message[:MAX_MESSAGE],
                "lastTransitionTime": iso(now),
                "observedGeneration": generation,
            }
        )
    return out


def dispatched_status(
    current: dict[str, Any],
    dispatch_id: str,
    reused: bool,
    generation: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """Status once the object is bound to a live dispatch."""
    conds = condition(
        current.get("conditions"),
        DISPATCHED,
        True,
        "DispatchReused" if reused else "DispatchCreated",
        f"LiveKit dispatch {dispatch_id} serves this room",
        generation,
        now,
    )
    conds = condition(conds, READY, True, "DispatchLive", f"dispatch {dispatch_id} is live", generation, now)
    phase = current.get("phase")
    # Active/Idle come from the lifecycle tracker and stay while the dispatch is unchanged.
    keep_phase = phase in (Phase.ACTIVE, Phase.IDLE) and current.get("dispatchId") == dispatch_id
    same = current.get("dispatchId") == dispatch_id
    return {
        "phase": phase if keep_phase else Phase.DISPATCHED.value,
        "dispatchId": dispatch_id,
        # When this dispatch began serving: the agent-presence grace runs from here.
        "dispatchedAt": current.get("dispatchedAt") if same and current.get("dispatchedAt") else iso(now),
        "reused": reused,
        "lastError": None,
        "observedGeneration": generation,
        "conditions": conds,
    }


def failed_status(
    current: dict[str, Any],
    error: str,
    reason: str,
    generation: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """Status after the in-call retries are spent: Failed, Ready=False with the error."""
    conds = condition(current.get("conditions"), READY, False, reason, error, generation, now)
    if not current.get("dispatchId"):
        conds = condition(conds, DISPATCHED, False, reason, error, generation, now)
    return {
        "phase": Phase.FAILED.value,
        "lastError": error[:MAX_MESSAGE],
        "observedGeneration": generation,
        "conditions": conds,
    }
