"""Session state, the scoring rules (performance, achievements, recommendations) and the seed-003
bodies built from them (loqua_tutor.state, .scoring, .contract)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from loqua_tutor.contract import Performance, ProgressStatus, ProgressUpdate, SessionRecord, body
from loqua_tutor.learner import is_valid_id, new_session_id
from loqua_tutor.scoring import (
    compute_achievements,
    compute_recommendations,
    duration_minutes,
    progress_update,
    rate_performance,
    session_record,
    streak_after_session,
)
from loqua_tutor.state import SessionState, UserContext

TODAY = dt.date(2025, 1, 15)

API_CONTEXT = {
    "user_id": "u1",
    "preferences": {
        "language_learning": "spanish",
        "native_language": "english",
        "learning_pace": "fast",
        "focus_areas": ["pronunciation", "vocabulary"],
        "session_length_preference": 20,
    },
    "progress": {
        "total_sessions": 25,
        "words_learned": 45,
        "phrases_practiced": 89,
        "pronunciation_score_avg": 82,
        "grammar_points_covered": ["present_tense", "articles"],
        "achievements_unlocked": ["first_week", "vocabulary_10"],
        "last_session_date": "2025-01-14T15:30:00Z",
        "current_streak": 6,
    },
}


def tracker_with(words: int = 0, phrases: int = 0, scores: tuple[int, ...] = (), grammar: int = 0) -> SessionState:
    t = SessionState()
    for i in range(words):
        t.record_new_word(f"palabra{i}", f"word{i}", "es")
    for i in range(phrases):
        t.record_phrase(f"frase {i}")
    for s in scores:
        t.record_pronunciation(s)
    for i in range(grammar):
        t.record_grammar_point(f"point_{i}")
    return t


def test_context_from_api_and_defaults() -> None:
    ctx = UserContext.from_api("u1", API_CONTEXT)
    assert ctx.known and ctx.target_language == "spanish" and ctx.learning_pace.value == "fast"
    assert ctx.focus_areas == ("pronunciation", "vocabulary") and ctx.total_sessions == 25
    assert ctx.last_session_date == dt.datetime(2025, 1, 14, 15, 30, tzinfo=dt.UTC)
    odd = UserContext.from_api("u2", {"preferences": {"learning_pace": "warp", "focus_areas": "x"}, "progress": []})
    assert odd.learning_pace.value == "moderate" and odd.focus_areas == () and odd.total_sessions == 0
    assert not UserContext.default("u3").known


def test_tracker_counts_and_versions() -> None:
    t = SessionState()
    assert t.record_new_word(" hola ", "hello", "es") is True
    assert t.record_new_word("HOLA", "hi", "es") is False  # same word: not counted twice
    assert t.record_phrase("buenos días") == 1 and t.record_phrase("buenos días") == 2
    assert t.record_pronunciation(80) == 80 and t.record_pronunciation(90) == 85
    assert t.record_grammar_point("present_tense") and not t.record_grammar_point("present_tense")
    snap = t.snapshot()
    assert (snap.words_learned, snap.phrases_practiced, snap.pronunciation_avg) == (1, 2, 85)
    assert snap.vocabulary[0].word == "hola" and snap.activity == 1 + 2 + 2 + 1
    assert t.version == 6  # one bump per change, none for duplicates


@pytest.mark.parametrize("bad", [-1, 101, float("nan"), "90", True])
def test_pronunciation_score_validated(bad: object) -> None:
    with pytest.raises(ValueError):
        SessionState().record_pronunciation(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("word", ["", "   ", 3])
def test_words_validated(word: object) -> None:
    with pytest.raises(ValueError):
        SessionState().record_new_word(word, "x", "es")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("avg", "activity", "expected"),
    [
        (95, 12, Performance.EXCELLENT),
        (95, 5, Performance.GOOD),
        (80, 5, Performance.GOOD),
        (80, 4, Performance.FAIR),
        (65, 30, Performance.FAIR),
        (50, 30, Performance.NEEDS_IMPROVEMENT),
        (None, 15, Performance.GOOD),
        (None, 5, Performance.FAIR),
        (None, 0, Performance.NEEDS_IMPROVEMENT),
    ],
)
def test_rate_performance(avg: float | None, activity: int, expected: Performance) -> None:
    assert rate_performance(avg, activity) is expected


def test_first_conversation_only_with_known_empty_history() -> None:
    snap = tracker_with(words=1).snapshot()
    new = UserContext.from_api("u", {"progress": {"total_sessions": 0}})
    assert "first_conversation" in compute_achievements(snap, new, TODAY)
    assert "first_conversation" not in compute_achievements(snap, UserContext.default("u"), TODAY)
    old = UserContext.from_api("u", API_CONTEXT)
    assert "first_conversation" not in compute_achievements(snap, old, TODAY)


def test_vocabulary_milestones_crossed_and_already_unlocked_filtered() -> None:
    ctx = UserContext.from_api("u", API_CONTEXT)  # 45 words, vocabulary_10 already unlocked
    got = compute_achievements(tracker_with(words=6).snapshot(), ctx, TODAY)
    assert "vocabulary_50" in got and "vocabulary_10" not in got
    assert not any(
        a.startswith("vocabulary_") for a in compute_achievements(tracker_with(words=4).snapshot(), ctx, TODAY)
    )


def test_pronunciation_pro_and_grammar_explorer() -> None:
    ctx = UserContext.default("u")
    got = compute_achievements(tracker_with(scores=(92, 95, 90, 91, 99), grammar=3).snapshot(), ctx, TODAY)
    assert got == ["pronunciation_pro", "grammar_explorer"]
    assert compute_achievements(tracker_with(scores=(92, 95, 90, 91)).snapshot(), ctx, TODAY) == []


def test_streaks() -> None:
    ctx = UserContext.from_api("u", API_CONTEXT)  # streak 6, last session yesterday
    assert streak_after_session(ctx, TODAY) == 7
    assert "streak_7" in compute_achievements(tracker_with(phrases=1).snapshot(), ctx, TODAY)
    assert streak_after_session(ctx, dt.date(2025, 1, 14)) == 6  # same day
    assert streak_after_session(ctx, dt.date(2025, 1, 20)) == 1  # broken
    assert "streak_7" not in compute_achievements(tracker_with().snapshot(), ctx, TODAY)  # nothing done


def test_recommendations_follow_what_happened_and_focus_areas() -> None:
    ctx = UserContext.from_api("u", API_CONTEXT)
    recs = compute_recommendations(tracker_with(words=2, scores=(60, 70), grammar=1).snapshot(), ctx)
    assert recs[0].startswith("Review the 2 new words")
    assert any("pronunciation" in r and "65/100" in r for r in recs)
    assert any(r.startswith("Consolidate point_0") for r in recs)
    assert any("vocabulary" in r.lower() for r in recs)  # focus area
    assert len(recs) <= 5 and len(set(recs)) == len(recs)
    empty = compute_recommendations(tracker_with().snapshot(), ctx)
    assert any("everyday conversation in spanish" in r for r in empty)


def test_session_id_format() -> None:
    sid = new_session_id(1736937000.123, "abc123xyz")
    assert sid == "sess_1736937000123_abc123xyz" and is_valid_id(sid)
    assert is_valid_id(new_session_id(1.0))


def test_progress_body_shape() -> None:
    update = progress_update(
        "u1", "sess_1_a", ProgressStatus.IN_PROGRESS, tracker_with(words=2, scores=(84, 87)).snapshot()
    )
    sent = body(update)
    assert sent == {
        "userId": "u1",
        "sessionId": "sess_1_a",
        "data": {
            "status": "in_progress",
            "progress": {
                "words_learned": 2,
                "phrases_practiced": 0,
                "grammar_points": [],
                "pronunciation_score": 86,
            },
        },
    }
    assert ProgressUpdate.model_validate(sent) == update
    unmeasured = body(progress_update("u", "s", ProgressStatus.COMPLETED, tracker_with().snapshot()))
    assert "pronunciation_score" not in unmeasured["data"]["progress"]
    with pytest.raises(ValidationError, match=r"data\.status"):
        ProgressUpdate.model_validate({**sent, "data": {"status": "done", "progress": sent["data"]["progress"]}})
    with pytest.raises(ValidationError, match="pronunciation_score"):
        ProgressUpdate.model_validate(
            {
                **sent,
                "data": {"status": "completed", "progress": {**sent["data"]["progress"], "pronunciation_score": 101}},
            }
        )


def test_session_record_shape_and_validation() -> None:
    t = tracker_with(words=1, scores=(90,), grammar=1)
    t.record_topic("greetings")
    record = body(
        session_record(
            user_id="u1",
            session_id="sess_1_a",
            seconds=61,
            snapshot=t.snapshot(),
            context=UserContext.from_api("u1", API_CONTEXT),
            today=TODAY,
        )
    )
    assert set(record) == {
        "userId",
        "sessionId",
        "duration_minutes",
        "topics_covered",
        "new_vocabulary",
        "grammar_points",
        "pronunciation_practice_count",
        "overall_performance",
        "achievements",
        "next_session_recommendations",
    }
    assert record["duration_minutes"] == 2 and record["topics_covered"] == ["greetings"]
    assert record["new_vocabulary"] == [{"word": "palabra0", "translation": "word0", "language": "es"}]
    assert record["pronunciation_practice_count"] == 1
    assert record["overall_performance"] in {p.value for p in Performance}
    for field, bad in [
        ("overall_performance", "great"),
        ("duration_minutes", -1),
        ("achievements", [""]),
        ("new_vocabulary", [{"word": "x"}]),
        ("userId", ""),
    ]:
        with pytest.raises(ValidationError, match=field):
            SessionRecord.model_validate({**record, field: bad})


def test_duration_minutes() -> None:
    assert [duration_minutes(s) for s in (0, 1, 60, 61, 1800)] == [1, 1, 1, 2, 30]
