"""The scoring rules: what a session adds up to - the performance rating, achievements,
next-session recommendations, its duration - and the two bodies built from it (seed 003's
progress update and learning-session record). Pure: no I/O, no clocks (``today`` is passed in).
"""

from __future__ import annotations

import datetime as dt
import math

from loqua_tutor.contract import (
    Performance,
    ProgressData,
    ProgressFigures,
    ProgressStatus,
    ProgressUpdate,
    SessionRecord,
    VocabularyEntry,
)
from loqua_tutor.state import ProgressSnapshot, UserContext

VOCABULARY_MILESTONES = (10, 50, 100, 250, 500, 1000)
STREAK_MILESTONES = (3, 7, 14, 30, 100)
MAX_RECOMMENDATIONS = 5


def rate_performance(pronunciation_avg: float | None, activity: int) -> Performance:
    """Overall performance from the pronunciation average and how much happened.

    | pronunciation avg | activity | rating |
    | --- | --- | --- |
    | >= 90 | >= 10 | excellent |
    | >= 75 (or >= 90 with less activity) | >= 5 | good |
    | >= 60, or >= 75 with activity < 5 | any | fair |
    | < 60 | any | needs_improvement |
    | none measured | >= 15 / >= 5 / less | good / fair / needs_improvement |
    """
    if pronunciation_avg is None:
        if activity >= 15:
            return Performance.GOOD
        return Performance.FAIR if activity >= 5 else Performance.NEEDS_IMPROVEMENT
    if pronunciation_avg >= 90 and activity >= 10:
        return Performance.EXCELLENT
    if pronunciation_avg >= 75:
        return Performance.GOOD if activity >= 5 else Performance.FAIR
    if pronunciation_avg >= 60:
        return Performance.FAIR
    return Performance.NEEDS_IMPROVEMENT


def streak_after_session(context: UserContext, today: dt.date) -> int:
    """The learner's day streak once today's session counts."""
    last = context.last_session_date.astimezone(dt.UTC).date() if context.last_session_date else None
    if last == today:
        return max(1, context.current_streak)
    if last == today - dt.timedelta(days=1):
        return context.current_streak + 1
    return 1


def compute_achievements(snapshot: ProgressSnapshot, context: UserContext, today: dt.date) -> list[str]:
    """Achievements unlocked by this session, minus those the learner already has."""
    found: list[str] = []
    if context.known and context.total_sessions == 0:
        found.append("first_conversation")
    if context.known and snapshot.words_learned:
        before, after = context.words_learned, context.words_learned + snapshot.words_learned
        found += [f"vocabulary_{m}" for m in VOCABULARY_MILESTONES if before < m <= after]
    avg = snapshot.pronunciation_avg
    if avg is not None and avg >= 90 and len(snapshot.pronunciation_scores) >= 5:
        found.append("pronunciation_pro")
    if len(snapshot.grammar_points) >= 3:
        found.append("grammar_explorer")
    if context.known and snapshot.activity > 0:
        streak = streak_after_session(context, today)
        found += [f"streak_{m}" for m in STREAK_MILESTONES if context.current_streak < m <= streak]
    have = set(context.achievements_unlocked)
    return [a for a in dict.fromkeys(found) if a not in have]


_FOCUS_ADVICE = {
    "pronunciation": "Practise pronunciation with short read-aloud drills",
    "vocabulary": "Learn and use new vocabulary in full sentences",
    "grammar": "Work through a new grammar point with guided examples",
    "listening": "Practise listening with a short story and comprehension questions",
    "speaking": "Hold a longer free conversation to build speaking fluency",
    "conversation": "Hold a longer free conversation to build speaking fluency",
    "writing": "Dictate and correct a short paragraph",
}


def compute_recommendations(snapshot: ProgressSnapshot, context: UserContext) -> list[str]:
    """Up to five concrete suggestions from what happened and the learner's focus areas."""
    recs: list[str] = []
    avg = snapshot.pronunciation_avg
    if snapshot.vocabulary:
        words = ", ".join(v.word for v in snapshot.vocabulary[:5])
        recs.append(f"Review the {snapshot.words_learned} new words from this session: {words}")
    if avg is not None and avg < 75:
        recs.append(f"Focus on pronunciation: this session averaged {round(avg)}/100")
    if snapshot.grammar_points:
        recs.append(f"Consolidate {', '.join(snapshot.grammar_points[:3])} with new example sentences")
    if snapshot.activity == 0:
        recs.append(f"Start with a short everyday conversation in {context.target_language}")
    for area in context.focus_areas:
        key = area.strip().lower()
        if key == "pronunciation" and avg is not None and avg >= 90:
            continue  # already strong there this session
        if key == "vocabulary" and snapshot.words_learned >= 10:
            continue
        if key == "grammar" and len(snapshot.grammar_points) >= 3:
            continue
        recs.append(_FOCUS_ADVICE.get(key, f"Keep practising {area}"))
    if not snapshot.pronunciation_scores and "pronunciation" not in {a.lower() for a in context.focus_areas}:
        recs.append("Include a few pronunciation exercises")
    return list(dict.fromkeys(recs))[:MAX_RECOMMENDATIONS]


def duration_minutes(seconds: float) -> int:
    """Whole minutes, rounded up; a session that happened lasted at least one minute."""
    return max(1, math.ceil(max(0.0, seconds) / 60))


# ---- the bodies ---------------------------------------------------------------------------------


def progress_update(
    user_id: str, session_id: str, status: ProgressStatus, snapshot: ProgressSnapshot
) -> ProgressUpdate:
    """``POST /api/v1/agent/progress``. Only a measured pronunciation score is sent: 0 would read
    as "pronounced everything wrong"."""
    avg = snapshot.pronunciation_avg
    return ProgressUpdate(
        userId=user_id,
        sessionId=session_id,
        data=ProgressData(
            status=status,
            progress=ProgressFigures(
                words_learned=snapshot.words_learned,
                phrases_practiced=snapshot.phrases_practiced,
                pronunciation_score=None if avg is None else round(avg),
                grammar_points=list(snapshot.grammar_points),
            ),
        ),
    )


def session_record(
    *,
    user_id: str,
    session_id: str,
    seconds: float,
    snapshot: ProgressSnapshot,
    context: UserContext,
    today: dt.date,
) -> SessionRecord:
    """``POST /api/v1/agent/sessions``; the model validates it (raises ``ValueError`` naming the field)."""
    return SessionRecord(
        userId=user_id,
        sessionId=session_id,
        duration_minutes=duration_minutes(seconds),
        topics_covered=list(snapshot.topics) or list(snapshot.grammar_points[:3]) or ["conversation"],
        new_vocabulary=[VocabularyEntry(**v.to_json()) for v in snapshot.vocabulary],
        grammar_points=list(snapshot.grammar_points),
        pronunciation_practice_count=len(snapshot.pronunciation_scores),
        overall_performance=rate_performance(snapshot.pronunciation_avg, snapshot.activity),
        achievements=compute_achievements(snapshot, context, today),
        next_session_recommendations=compute_recommendations(snapshot, context),
    )
