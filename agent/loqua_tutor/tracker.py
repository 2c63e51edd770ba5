"""What happened in one learner session, and what it adds up to. Pure: no I/O, no clocks.

The tutor's function tools feed :class:`ProgressTracker`; from it come the progress body of
``POST /api/v1/agent/progress`` and the learning-session record of ``POST /api/v1/agent/sessions``
(shapes from seed 003, enums validated), with the performance rating, achievements and
next-session recommendations derived here.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ProgressStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class Performance(enum.StrEnum):
    EXCELLENT = "excellent"
    GOOD = "good"
    FAIR = "fair"
    NEEDS_IMPROVEMENT = "needs_improvement"


class LearningPace(enum.StrEnum):
    SLOW = "slow"
    MODERATE = "moderate"
    FAST = "fast"


MAX_TEXT = 200  # longest word/phrase/grammar point kept; the LLM sometimes passes whole sentences
MAX_ITEMS = 500  # per list and session; bounds memory and request size
VOCABULARY_MILESTONES = (10, 50, 100, 250, 500, 1000)
STREAK_MILESTONES = (3, 7, 14, 30, 100)
MAX_RECOMMENDATIONS = 5
_SESSION_ID = re.compile(r"sess_\d+_[A-Za-z0-9]+")


def new_session_id(now: float, random_part: str | None = None) -> str:
    """``sess_{timestamp}_{random}`` as in seed 003 (timestamp in milliseconds, 9 random chars)."""
    rnd = random_part if random_part is not None else secrets.token_hex(5)[:9]
    return f"sess_{int(now * 1000)}_{rnd}"


def is_session_id(value: str) -> bool:
    return bool(_SESSION_ID.fullmatch(value))


def _clean_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    text = " ".join(value.split())
    if not text:
        raise ValueError(f"{what} must not be empty")
    return text[:MAX_TEXT]


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and v]


def _int(value: object, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return default


def _opt_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class UserContext:
    """The parts of ``GET /api/v1/agent/user/{user_id}/context`` the tutor uses.

    ``known`` is False for the built-in default (API unreachable and nothing cached): achievements
    that depend on history (first conversation, streaks, milestones) are then not awarded.
    """

    user_id: str
    known: bool = True
    target_language: str = "spanish"
    native_language: str = "english"
    learning_pace: LearningPace = LearningPace.MODERATE
    focus_areas: tuple[str, ...] = ()
    session_length_preference: int = 30
    total_sessions: int = 0
    words_learned: int = 0
    phrases_practiced: int = 0
    pronunciation_score_avg: float | None = None
    grammar_points_covered: tuple[str, ...] = ()
    achievements_unlocked: tuple[str, ...] = ()
    last_session_date: dt.datetime | None = None
    current_streak: int = 0

    @classmethod
    def default(cls, user_id: str) -> UserContext:
        return cls(user_id=user_id, known=False)

    @classmethod
    def from_api(cls, user_id: str, body: Mapping[str, Any]) -> UserContext:
        """Tolerant parse: a missing or odd field falls back to the default, never an error."""
        prefs = body.get("preferences") if isinstance(body.get("preferences"), dict) else {}
        prog = body.get("progress") if isinstance(body.get("progress"), dict) else {}
        assert isinstance(prefs, dict) and isinstance(prog, dict)
        pace_raw = prefs.get("learning_pace")
        pace = LearningPace(pace_raw) if pace_raw in LearningPace._value2member_map_ else LearningPace.MODERATE
        target = prefs.get("language_learning")
        native = prefs.get("native_language")
        return cls(
            user_id=user_id,
            known=True,
            target_language=target if isinstance(target, str) and target else "spanish",
            native_language=native if isinstance(native, str) and native else "english",
            learning_pace=pace,
            focus_areas=tuple(_str_list(prefs.get("focus_areas"))),
            session_length_preference=max(1, _int(prefs.get("session_length_preference"), 30)),
            total_sessions=max(0, _int(prog.get("total_sessions"))),
            words_learned=max(0, _int(prog.get("words_learned"))),
            phrases_practiced=max(0, _int(prog.get("phrases_practiced"))),
            pronunciation_score_avg=_opt_float(prog.get("pronunciation_score_avg")),
            grammar_points_covered=tuple(_str_list(prog.get("grammar_points_covered"))),
            achievements_unlocked=tuple(_str_list(prog.get("achievements_unlocked"))),
            last_session_date=_parse_time(prog.get("last_session_date")),
            current_streak=max(0, _int(prog.get("current_streak"))),
        )


@dataclass(frozen=True)
class VocabularyItem:
    word: str
    translation: str
    language: str

    def to_json(self) -> dict[str, str]:
        return {"word": self.word, "translation": self.translation, "language": self.language}


@dataclass(frozen=True)
class ProgressSnapshot:
    """An immutable view of the tracker; equal snapshots mean nothing new to send."""

    vocabulary: tuple[VocabularyItem, ...] = ()
    phrases: tuple[str, ...] = ()
    pronunciation_scores: tuple[int, ...] = ()
    grammar_points: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()

    @property
    def words_learned(self) -> int:
        return len(self.vocabulary)

    @property
    def phrases_practiced(self) -> int:
        return len(self.phrases)

    @property
    def pronunciation_avg(self) -> float | None:
        if not self.pronunciation_scores:
            return None
        return sum(self.pronunciation_scores) / len(self.pronunciation_scores)

    @property
    def activity(self) -> int:
        """Learning events this session: every tool call that taught or checked something."""
        return len(self.vocabulary) + len(self.phrases) + len(self.pronunciation_scores) + len(self.grammar_points)

    def progress_json(self) -> dict[str, Any]:
        progress: dict[str, Any] = {
            "words_learned": self.words_learned,
            "phrases_practiced": self.phrases_practiced,
            "grammar_points": list(self.grammar_points),
        }
        avg = self.pronunciation_avg
        # Only a measured score is sent: 0 would read as "pronounced everything wrong".
        if avg is not None:
            progress["pronunciation_score"] = round(avg)
        return progress


@dataclass
class ProgressTracker:
    """Mutable session state behind the function tools. Not thread-safe: one event loop owns it."""

    _vocabulary: dict[tuple[str, str], VocabularyItem] = field(default_factory=dict)
    _phrases: list[str] = field(default_factory=list)
    _scores: list[int] = field(default_factory=list)
    _grammar: list[str] = field(default_factory=list)
    _topics: list[str] = field(default_factory=list)
    version: int = 0  # bumped on every change; the progress loop compares versions

    def record_new_word(self, word: str, translation: str, language: str) -> bool:
        """Add a word; ``False`` when it was already learned this session (not counted twice)."""
        item = VocabularyItem(
            _clean_text(word, "word"),
            _clean_text(translation, "translation"),
            _clean_text(language, "language"),
        )
        key = (item.word.casefold(), item.language.casefold())
        if key in self._vocabulary or len(self._vocabulary) >= MAX_ITEMS:
            return False
        self._vocabulary[key] = item
        self.version += 1
        return True

    def record_phrase(self, phrase: str) -> int:
        """Count one practised phrase (repeats count: practice is practice). Returns the total."""
        text = _clean_text(phrase, "phrase")
        if len(self._phrases) < MAX_ITEMS:
            self._phrases.append(text)
            self.version += 1
        return len(self._phrases)

    def record_pronunciation(self, score: float) -> float:
        """Record a 0-100 pronunciation score; returns the session average."""
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ValueError("score must be a number")
        if not 0 <= score <= 100:
            raise ValueError("score must be between 0 and 100")
        if len(self._scores) < MAX_ITEMS:
            self._scores.append(round(score))
            self.version += 1
        return sum(self._scores) / len(self._scores)

    def record_grammar_point(self, point: str) -> bool:
        text = _clean_text(point, "grammar point")
        if text in self._grammar or len(self._grammar) >= MAX_ITEMS:
            return False
        self._grammar.append(text)
        self.version += 1
        return True

    def record_topic(self, topic: str) -> bool:
        text = _clean_text(topic, "topic")
        if text in self._topics or len(self._topics) >= MAX_ITEMS:
            return False
        self._topics.append(text)
        self.version += 1
        return True

    def snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(
            vocabulary=tuple(self._vocabulary.values()),
            phrases=tuple(self._phrases),
            pronunciation_scores=tuple(self._scores),
            grammar_points=tuple(self._grammar),
            topics=tuple(self._topics),
        )


# ---- derived values ---------------------------------------------------------------------------


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


# ---- request bodies -----------------------------------------------------------------------------


def progress_body(user_id: str, session_id: str, status: ProgressStatus, snapshot: ProgressSnapshot) -> dict:
    """``POST /api/v1/agent/progress`` body (seed 003: camelCase ``userId``/``sessionId``)."""
    return {
        "userId": user_id,
        "sessionId": session_id,
        "data": {"status": ProgressStatus(status).value, "progress": snapshot.progress_json()},
    }


def session_record(
    *,
    user_id: str,
    session_id: str,
    seconds: float,
    snapshot: ProgressSnapshot,
    context: UserContext,
    today: dt.date,
) -> dict[str, Any]:
    """``POST /api/v1/agent/sessions`` body, validated before it is returned."""
    topics = list(snapshot.topics) or list(snapshot.grammar_points[:3]) or ["conversation"]
    body = {
        "userId": user_id,
        "sessionId": session_id,
        "duration_minutes": duration_minutes(seconds),
        "topics_covered": topics,
        "new_vocabulary": [v.to_json() for v in snapshot.vocabulary],
        "grammar_points": list(snapshot.grammar_points),
        "pronunciation_practice_count": len(snapshot.pronunciation_scores),
        "overall_performance": rate_performance(snapshot.pronunciation_avg, snapshot.activity).value,
        "achievements": compute_achievements(snapshot, context, today),
        "next_session_recommendations": compute_recommendations(snapshot, context),
    }
    validate_session_record(body)
    return body


def _require_str_list(body: Mapping[str, Any], key: str) -> None:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key} must be a list of non-empty strings")


def validate_session_record(body: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field that does not match the seed-003 contract."""
    for key in ("userId", "sessionId"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ValueError(f"{key} must be a non-empty string")
    minutes = body.get("duration_minutes")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 0:
        raise ValueError("duration_minutes must be a non-negative integer")
    count = body.get("pronunciation_practice_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("pronunciation_practice_count must be a non-negative integer")
    if body.get("overall_performance") not in Performance._value2member_map_:
        raise ValueError(f"overall_performance must be one of {', '.join(p.value for p in Performance)}")
    for key in ("topics_covered", "grammar_points", "achievements", "next_session_recommendations"):
        _require_str_list(body, key)
    vocab = body.get("new_vocabulary")
    if not isinstance(vocab, list):
        raise ValueError("new_vocabulary must be a list")
    for item in vocab:
        if not (
            isinstance(item, dict)
            and set(item) == {"word", "translation", "language"}
            and all(isinstance(item[k], str) and item[k] for k in item)
        ):
            raise ValueError("new_vocabulary items must be {word, translation, language} strings")


def validate_progress_body(body: Mapping[str, Any]) -> None:
    for key in ("userId", "sessionId"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ValueError(f"{key} must be a non-empty string")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("status") not in ProgressStatus._value2member_map_:
        raise ValueError(f"data.status must be one of {', '.join(s.value for s in ProgressStatus)}")
    progress = data.get("progress")
    if not isinstance(progress, dict):
        raise ValueError("data.progress must be an object")
    score = progress.get("pronunciation_score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100):
        raise ValueError("data.progress.pronunciation_score must be an integer 0-100")
