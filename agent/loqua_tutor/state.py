"""What happened in one learner session, and what the tutor knows about the learner. Pure state:
no I/O, no clocks, no rules about what it adds up to (that is :mod:`loqua_tutor.scoring`).

The tutor's function tools feed :class:`SessionState`; :class:`UserContext` is the learner's
context from the API (or the defaults while it is unreachable).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loqua_tutor.contract import LearningPace, UserContextResponse

MAX_TEXT = 200  # longest word/phrase/grammar point kept; the LLM sometimes passes whole sentences
MAX_ITEMS = 500  # per list and session; bounds memory and request size


def _clean_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    text = " ".join(value.split())
    if not text:
        raise ValueError(f"{what} must not be empty")
    return text[:MAX_TEXT]


@dataclass(frozen=True)
class UserContext:
    """The parts of the learner's context the tutor uses.

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
    def from_api(cls, user_id: str, response: UserContextResponse | Mapping[str, Any]) -> UserContext:
        """From the context response (or its JSON): lenient, a missing or odd field is a default."""
        if not isinstance(response, UserContextResponse):
            response = UserContextResponse.model_validate(response)
        prefs, prog = response.preferences, response.progress
        last = prog.last_session_date
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=dt.UTC)
        return cls(
            user_id=user_id,
            known=True,
            target_language=prefs.language_learning,
            native_language=prefs.native_language,
            learning_pace=prefs.learning_pace,
            focus_areas=tuple(prefs.focus_areas),
            session_length_preference=prefs.session_length_preference,
            total_sessions=prog.total_sessions,
            words_learned=prog.words_learned,
            phrases_practiced=prog.phrases_practiced,
            pronunciation_score_avg=prog.pronunciation_score_avg,
            grammar_points_covered=tuple(prog.grammar_points_covered),
            achievements_unlocked=tuple(prog.achievements_unlocked),
            last_session_date=last,
            current_streak=prog.current_streak,
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
    """An immutable view of the session state; equal snapshots mean nothing new to send."""

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


@dataclass
class SessionState:
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
