"""Seed 003's API contract: every request and response body of the five agent endpoints, typed.

Requests are what the tutor sends: strict (``extra="forbid"``, enums and ranges checked), so a
body that breaks the contract fails here, in our process, with the field named - not as a 400
from the API at the end of a session. Responses are what the API sends: lenient (unknown keys
ignored; a field of the wrong type falls back to its default where the tutor can do without it),
because the conversation must not die of an API that added or changed a field. Serialize with
:func:`body` (JSON mode, ``None`` left out: an unmeasured pronunciation score is absent, not 0).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticUseDefault

USER_TOKEN = "/api/v1/agent/user-token"
USER_CONTEXT = "/api/v1/agent/user/{user_id}/context"
PROGRESS = "/api/v1/agent/progress"
SESSIONS = "/api/v1/agent/sessions"
HEALTH = "/api/v1/agent/health"


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


def _or_default(value: Any, handler: Any) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise PydanticUseDefault() from None


def _str_items(value: Any, handler: Any) -> Any:
    """A list of strings, keeping the non-empty string items of whatever list was sent."""
    if not isinstance(value, list):
        raise PydanticUseDefault()
    return handler([v for v in value if isinstance(v, str) and v])


Lenient = WrapValidator(_or_default)
StrItems = WrapValidator(_str_items)
NonEmpty = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=0)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def body(model: BaseModel) -> dict[str, Any]:
    """The JSON body of a request model."""
    return model.model_dump(mode="json", exclude_none=True)


# ---- 1. POST /api/v1/agent/user-token (agent JWT) ----------------------------------------------------


class UserTokenRequest(_Request):
    room_name: NonEmpty
    user_id: NonEmpty
    agent_id: NonEmpty


class UserTokenResponse(_Response):
    encrypted_token: str  # {iv_hex}:{ciphertext_hex}; required: without it there is nothing to decrypt
    user_id: Annotated[str | None, Lenient] = None
    room_name: Annotated[str | None, Lenient] = None
    expires_in: Annotated[int | None, Lenient] = None
    issued_at: Annotated[str | None, Lenient] = None
    issued_to: Annotated[str | None, Lenient] = None


# ---- 2. POST /api/v1/agent/progress (user JWT) -------------------------------------------------------


class ProgressFigures(_Request):
    words_learned: Count
    phrases_practiced: Count
    pronunciation_score: Annotated[int, Field(ge=0, le=100)] | None = None  # absent until one is measured
    grammar_points: list[NonEmpty]


class ProgressData(_Request):
    status: ProgressStatus
    progress: ProgressFigures


class ProgressUpdate(_Request):
    userId: NonEmpty
    sessionId: NonEmpty
    data: ProgressData


class ProgressAck(_Response):
    success: Annotated[bool, Lenient] = True
    message: Annotated[str, Lenient] = ""
    timestamp: Annotated[str, Lenient] = ""


# ---- 3. POST /api/v1/agent/sessions (user JWT) -------------------------------------------------------


class VocabularyEntry(_Request):
    word: NonEmpty
    translation: NonEmpty
    language: NonEmpty


class SessionRecord(_Request):
    userId: NonEmpty
    sessionId: NonEmpty
    duration_minutes: Count
    topics_covered: list[NonEmpty]
    new_vocabulary: list[VocabularyEntry]
    grammar_points: list[NonEmpty]
    pronunciation_practice_count: Count
    overall_performance: Performance
    achievements: list[NonEmpty]
    next_session_recommendations: list[NonEmpty]


class SessionCreated(_Response):
    success: Annotated[bool, Lenient] = True
    session_id: Annotated[str, Lenient] = ""
    created_at: Annotated[str, Lenient] = ""
    created_by: Annotated[str, Lenient] = ""
    agent_id: Annotated[str, Lenient] = ""


# ---- 4. GET /api/v1/agent/user/{user_id}/context (user JWT) ------------------------------------------


class Preferences(_Response):
    language_learning: Annotated[NonEmpty, Lenient] = "spanish"
    native_language: Annotated[NonEmpty, Lenient] = "english"
    learning_pace: Annotated[LearningPace, Lenient] = LearningPace.MODERATE
    focus_areas: Annotated[list[str], StrItems] = []
    session_length_preference: Annotated[int, Field(ge=1), Lenient] = 30


class ContextProgress(_Response):
    total_sessions: Annotated[Count, Lenient] = 0
    total_conversation_time: Annotated[Count, Lenient] = 0
    words_learned: Annotated[Count, Lenient] = 0
    phrases_practiced: Annotated[Count, Lenient] = 0
    pronunciation_score_avg: Annotated[float | None, Field(allow_inf_nan=False), Lenient] = None
    grammar_points_covered: Annotated[list[str], StrItems] = []
    achievements_unlocked: Annotated[list[str], StrItems] = []
    last_session_date: Annotated[dt.datetime | None, Lenient] = None
    current_streak: Annotated[Count, Lenient] = 0


class SessionSummary(_Response):
    session_id: Annotated[str, Lenient] = ""
    date: Annotated[str, Lenient] = ""
    duration_minutes: Annotated[Count, Lenient] = 0
    topics_covered: Annotated[list[str], StrItems] = []


class UserContextResponse(_Response):
    user_id: Annotated[str, Lenient] = ""
    preferences: Annotated[Preferences, Lenient] = Preferences()
    progress: Annotated[ContextProgress, Lenient] = ContextProgress()
    session_history: Annotated[list[SessionSummary], Lenient] = []
    created_at: Annotated[str, Lenient] = ""
    updated_at: Annotated[str, Lenient] = ""


# ---- 5. POST /api/v1/agent/health (user JWT) ---------------------------------------------------------


class HealthRequest(_Request):
    userId: NonEmpty


class HealthResponse(_Response):
    status: Annotated[str, Lenient] = "?"
    agent_id: Annotated[str, Lenient] = ""
    permissions: Annotated[list[str], StrItems] = []
    timestamp: Annotated[str, Lenient] = ""
