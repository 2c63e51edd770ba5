"""The user context of ``GET /api/v1/agent/user/{user_id}/context``, aggregated from stored records.

Progress values in an update are the session's running totals, so only the latest update of each
session counts (a retried or repeated update never inflates the totals).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from loqua_devstack.loqua_api.timeutil import iso, parse_iso

HISTORY_LIMIT = 10


def _whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 2)


def _ordered_union(lists: list[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        for item in items:
            seen.setdefault(item, None)
    return list(seen)


def current_streak(days: set[date], today: date) -> int:
    """Consecutive days with activity ending today, or yesterday when today has none yet."""
    day = today if today in days else today - timedelta(days=1)
    streak = 0
    while day in days:
        streak += 1
        day -= timedelta(days=1)
    return streak


def progress_totals(progress: list[dict[str, Any]], sessions: list[dict[str, Any]], today: date) -> dict[str, Any]:
    """``progress`` from progress updates and session records (both oldest first)."""
    latest: dict[str, dict[str, Any]] = {}
    for update in progress:
        latest[update["session_id"]] = update["data"].get("progress") or {}
    vocabulary = {s["session_id"]: len(s.get("new_vocabulary") or []) for s in sessions}
    words = sum(
        max(latest.get(sid, {}).get("words_learned", 0), vocabulary.get(sid, 0))
        for sid in latest.keys() | vocabulary.keys()
    )
    scores = [p["pronunciation_score"] for p in latest.values() if p.get("pronunciation_score") is not None]
    grammar = _ordered_union(
        [(u["data"].get("progress") or {}).get("grammar_points") or [] for u in progress]
        + [s.get("grammar_points") or [] for s in sessions]
    )
    days = {parse_iso(u["received_at"]).date() for u in progress} | {
        parse_iso(s["created_at"]).date() for s in sessions
    }
    return {
        "total_sessions": len(sessions),
        "total_conversation_time": _whole(sum(s["duration_minutes"] for s in sessions)),
        "words_learned": words,
        "phrases_practiced": sum(p.get("phrases_practiced", 0) for p in latest.values()),
        "pronunciation_score_avg": round(sum(scores) / len(scores)) if scores else 0,
        "grammar_points_covered": grammar,
        "achievements_unlocked": _ordered_union([s.get("achievements") or [] for s in sessions]),
        "last_session_date": sessions[-1]["created_at"] if sessions else None,
        "current_streak": current_streak(days, today),
    }


def build_context(
    user: dict[str, Any],
    progress: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    agent_id: str,
    now: datetime,
) -> dict[str, Any]:
    history = [
        {
            "session_id": s["session_id"],
            "date": s["created_at"],
            "duration_minutes": s["duration_minutes"],
            "topics_covered": s.get("topics_covered") or [],
        }
        for s in reversed(sessions[-HISTORY_LIMIT:])
    ]
    return {
        "user_id": user["user_id"],
        "preferences": user["preferences"],
        "progress": progress_totals(progress, sessions, now.date()),
        "session_history": history,
        "created_at": user["created_at"],
        "updated_at": user["updated_at"],
        "accessed_by": {"agent_id": agent_id, "timestamp": iso(now)},
    }
