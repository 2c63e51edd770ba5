"""The reference Loqua API in-process (aiohttp TestServer) over a temporary SQLite file.

Response shapes are checked key for key against seed 003; the issued user token is decrypted with an
implementation written here from the cryptography primitives, not with the API's own module.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from loqua_devstack.loqua_api import ApiConfig, create_app, mint_agent_token, mint_user_token
from tests.seed_contract import (
    CONTEXT_KEYS,
    CONTEXT_PROGRESS_KEYS,
    HEALTH_KEYS,
    HISTORY_KEYS,
    ISO_Z,
    PREFERENCE_KEYS,
    PROGRESS_KEYS,
    SESSION_KEYS,
    USER_TOKEN_KEYS,
    example_session_body,
    independent_decrypt,
)

JWT_SECRET = "unit-jwt-secret-0123456789abcdef-0123456789"
SHARED_SECRET = "short-secret"  # < 32 bytes: the pad byte matters
PAD_BYTE = 0x30
ADMIN_TOKEN = "unit-admin-token"
AGENT_ID = "unit-tutor"
TTL = 1234
ERROR_CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def assert_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error", "timestamp"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert ERROR_CODE.match(code) and body["error"]["message"]
    assert ISO_Z.match(body["timestamp"])


@pytest.fixture
def config(tmp_path: Path) -> ApiConfig:
    return ApiConfig(
        db_path=tmp_path / "api.sqlite",
        jwt_secret=JWT_SECRET,
        shared_secret=SHARED_SECRET,
        admin_token=ADMIN_TOKEN,
        pad_byte=PAD_BYTE,
        user_token_ttl_seconds=TTL,
    )


@pytest.fixture
async def client(config: ApiConfig) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(config))) as c:
        yield c


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def agent_headers(token: str | None = None, agent_id: str | None = AGENT_ID) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token or mint_agent_token(JWT_SECRET, AGENT_ID, 600)}"}
    if agent_id is not None:
        headers["X-Agent-ID"] = agent_id
    return headers


async def create_user(client: TestClient, **body: Any) -> dict[str, Any]:
    resp = await client.post("/admin/users", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def exchange(client: TestClient, user_id: str, room: str = "room-1") -> str:
    """The user JWT, obtained like the worker does: agent JWT in, encrypted user JWT out."""
    body = {"room_name": room, "user_id": user_id, "agent_id": AGENT_ID}
    resp = await client.post("/api/v1/agent/user-token", json=body, headers=agent_headers())
    assert resp.status == 200, await resp.text()
    return independent_decrypt((await resp.json())["encrypted_token"], SHARED_SECRET, PAD_BYTE)


def user_headers(token: str, agent_id: str | None = AGENT_ID) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if agent_id is not None:
        headers["X-Agent-ID"] = agent_id
    return headers


@pytest.fixture
async def learner(client: TestClient) -> tuple[str, str]:
    """A created user and a user JWT for it."""
    user = await create_user(client, user_id="learner-1", email="l1@example.test", display_name="L One")
    return user["user_id"], await exchange(client, user["user_id"])


def progress_body(user_id: str, session_id: str | None = "sess-1", **progress: Any) -> dict[str, Any]:
    values = {
        "words_learned": 5,
        "phrases_practiced": 12,
        "pronunciation_score": 85,
        "grammar_points": ["articles"],
    }
    values.update(progress)
    body: dict[str, Any] = {"userId": user_id, "data": {"status": "in_progress", "progress": values}}
    if session_id is not None:
        body["sessionId"] = session_id
    return body


def session_body(user_id: str, session_id: str | None = "sess-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = example_session_body(user_id)
    if session_id is not None:
        body["sessionId"] = session_id
    body.update(extra)
    return body


# ---- health of the server, unknown routes ---------------------------------------------------------


async def test_healthz_needs_no_auth(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_unknown_route_uses_error_shape(client: TestClient) -> None:
    resp = await client.get("/api/v1/agent/nope")
    assert resp.status == 404
    assert_error(await resp.json(), "NOT_FOUND")


# ---- POST /api/v1/agent/user-token ----------------------------------------------------------------


async def test_user_token_shape_and_independent_decryption(client: TestClient) -> None:
    await create_user(client, user_id="u-token")
    body = {"room_name": "room-9", "user_id": "u-token", "agent_id": AGENT_ID}
    before = int(time.time())
    resp = await client.post("/api/v1/agent/user-token", json=body, headers=agent_headers())
    assert resp.status == 200
    data = await resp.json()
    assert set(data) == USER_TOKEN_KEYS
    assert data["user_id"] == "u-token" and data["room_name"] == "room-9" and data["issued_to"] == AGENT_ID
    assert data["expires_in"] == TTL and ISO_Z.match(data["issued_at"])
    assert re.fullmatch(r"[0-9a-f]{32}:([0-9a-f]{32})+", data["encrypted_token"])

    token = independent_decrypt(data["encrypted_token"], SHARED_SECRET, PAD_BYTE)
    assert token.count(".") == 2
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "u-token" and claims["role"] == "user"
    assert claims["room"] == "room-9" and claims["agent_id"] == AGENT_ID
    assert claims["exp"] - claims["iat"] == TTL and claims["iat"] >= before - 1


async def test_user_token_iv_is_random(client: TestClient) -> None:
    await create_user(client, user_id="u-iv")
    body = {"room_name": "r", "user_id": "u-iv", "agent_id": AGENT_ID}
    ivs = set()
    for _ in range(3):
        resp = await client.post("/api/v1/agent/user-token", json=body, headers=agent_headers())
        ivs.add((await resp.json())["encrypted_token"].split(":")[0])
    assert len(ivs) == 3


async def test_user_token_wrong_pad_byte_does_not_give_the_token(client: TestClient) -> None:
    await create_user(client, user_id="u-pad")
    body = {"room_name": "r", "user_id": "u-pad", "agent_id": AGENT_ID}
    resp = await client.post("/api/v1/agent/user-token", json=body, headers=agent_headers())
    encrypted = (await resp.json())["encrypted_token"]
    try:
        wrong = independent_decrypt(encrypted, SHARED_SECRET, 0x00)
    except (AssertionError, UnicodeDecodeError):
        return
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(wrong, JWT_SECRET, algorithms=["HS256"])


def _agent(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Agent-ID": AGENT_ID}


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"X-Agent-ID": AGENT_ID}, None, 401, "MISSING_TOKEN"),
        ({"Authorization": "Basic abc", "X-Agent-ID": AGENT_ID}, None, 401, "MISSING_TOKEN"),
        (_agent("not-a-jwt"), None, 401, "INVALID_TOKEN"),
        (
            _agent(mint_agent_token("another-secret-0123456789abcdef0123", AGENT_ID, 600)),
            None,
            401,
            "INVALID_TOKEN",
        ),
        (_agent(mint_agent_token(JWT_SECRET, AGENT_ID, -10)), None, 401, "TOKEN_EXPIRED"),
        (_agent(mint_user_token(JWT_SECRET, "u-err", "r", AGENT_ID, 600)), None, 401, "WRONG_TOKEN_ROLE"),
        ("no-agent-id", None, 400, "MISSING_AGENT_ID"),
        (None, {"user_id": "u-err", "agent_id": AGENT_ID}, 400, "MISSING_FIELD"),
        (None, {"room_name": "r", "agent_id": AGENT_ID}, 400, "MISSING_USER_ID"),
        (None, {"room_name": "r", "user_id": "u-err"}, 400, "MISSING_FIELD"),
        (None, {"room_name": 5, "user_id": "u-err", "agent_id": AGENT_ID}, 400, "INVALID_FIELD"),
        (None, {"room_name": "r", "user_id": "u-err", "agent_id": "someone-else"}, 400, "AGENT_ID_MISMATCH"),
        (None, {"room_name": "r", "user_id": "nobody", "agent_id": AGENT_ID}, 404, "USER_NOT_FOUND"),
        (None, "not json", 400, "INVALID_JSON"),
        (None, ["a", "list"], 400, "INVALID_JSON"),
    ],
)
async def test_user_token_errors(client: TestClient, headers: Any, body: Any, status: int, code: str) -> None:
    await create_user(client, user_id="u-err")
    if headers is None:
        headers = agent_headers()
    elif headers == "no-agent-id":
        headers = agent_headers(agent_id=None)
    if body is None:
        body = {"room_name": "r", "user_id": "u-err", "agent_id": AGENT_ID}
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    resp = await client.post("/api/v1/agent/user-token", headers=headers, **kwargs)
    assert resp.status == status
    assert_error(await resp.json(), code)
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


# ---- POST /api/v1/agent/progress ------------------------------------------------------------------


async def test_progress_shape(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    resp = await client.post("/api/v1/agent/progress", json=progress_body(user_id), headers=user_headers(token))
    assert resp.status == 200
    data = await resp.json()
    assert set(data) == PROGRESS_KEYS
    assert data["success"] is True and data["message"] == "Progress updated successfully"
    assert (data["userId"], data["sessionId"], data["agentId"]) == (user_id, "sess-1", AGENT_ID)
    assert ISO_Z.match(data["timestamp"])


async def test_progress_without_session_id_gets_one(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    body = progress_body(user_id, session_id=None)
    resp = await client.post("/api/v1/agent/progress", json=body, headers=user_headers(token))
    assert resp.status == 200
    assert re.fullmatch(r"sess_\d+_[0-9a-f]{8}", (await resp.json())["sessionId"])


@pytest.mark.parametrize("status", ["in_progress", "completed", "failed"])
async def test_progress_accepts_every_status(client: TestClient, learner: tuple[str, str], status: str) -> None:
    user_id, token = learner
    body = {"userId": user_id, "sessionId": "s", "data": {"status": status}}
    resp = await client.post("/api/v1/agent/progress", json=body, headers=user_headers(token))
    assert resp.status == 200


def _with_data(user_id: str, data: Any) -> dict[str, Any]:
    return {"userId": user_id, "sessionId": "s", "data": data}


@pytest.mark.parametrize(
    ("make_body", "code"),
    [
        (lambda u: {"sessionId": "s", "data": {"status": "in_progress"}}, "MISSING_USER_ID"),
        (lambda u: {"userId": "  ", "data": {"status": "in_progress"}}, "MISSING_USER_ID"),
        (lambda u: {"userId": 7, "data": {"status": "in_progress"}}, "INVALID_FIELD"),
        (lambda u: {"userId": u}, "MISSING_FIELD"),
        (lambda u: _with_data(u, "completed"), "INVALID_FIELD"),
        (lambda u: _with_data(u, {}), "MISSING_FIELD"),
        (lambda u: _with_data(u, {"status": "done"}), "INVALID_FIELD"),
        (lambda u: _with_data(u, {"status": "in_progress", "progress": []}), "INVALID_FIELD"),
        (lambda u: progress_body(u, pronunciation_score=101), "INVALID_FIELD"),
        (lambda u: progress_body(u, pronunciation_score=-1), "INVALID_FIELD"),
        (lambda u: progress_body(u, pronunciation_score="85"), "INVALID_FIELD"),
        (lambda u: progress_body(u, pronunciation_score=True), "INVALID_FIELD"),
        (lambda u: progress_body(u, words_learned=1.5), "INVALID_FIELD"),
        (lambda u: progress_body(u, phrases_practiced=-3), "INVALID_FIELD"),
        (lambda u: progress_body(u, grammar_points="articles"), "INVALID_FIELD"),
        (lambda u: progress_body(u, grammar_points=[1]), "INVALID_FIELD"),
        (lambda u: {**progress_body(u), "sessionId": 12}, "INVALID_FIELD"),
    ],
)
async def test_progress_validation(client: TestClient, learner: tuple[str, str], make_body: Any, code: str) -> None:
    user_id, token = learner
    resp = await client.post("/api/v1/agent/progress", json=make_body(user_id), headers=user_headers(token))
    assert resp.status == 400
    assert_error(await resp.json(), code)


async def test_progress_accepts_boundary_scores(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    for score in (0, 100, 72.5):
        body = progress_body(user_id, pronunciation_score=score)
        resp = await client.post("/api/v1/agent/progress", json=body, headers=user_headers(token))
        assert resp.status == 200, score


# ---- auth shared by the four user endpoints -----------------------------------------------------

USER_ENDPOINTS = [
    ("POST", "/api/v1/agent/progress", progress_body),
    ("POST", "/api/v1/agent/sessions", session_body),
    ("GET", "/api/v1/agent/user/{user_id}/context", None),
    ("POST", "/api/v1/agent/health", lambda u: {"userId": u}),
]


async def _call(
    client: TestClient, method: str, path: str, make_body: Any, user_id: str, headers: dict[str, str]
) -> ClientResponse:
    url = path.format(user_id=user_id)
    if make_body is None:
        return await client.request(method, url, headers=headers)
    return await client.request(method, url, json=make_body(user_id), headers=headers)


@pytest.mark.parametrize(("method", "path", "make_body"), USER_ENDPOINTS)
async def test_user_endpoints_refuse_bad_auth(
    client: TestClient, learner: tuple[str, str], method: str, path: str, make_body: Any
) -> None:
    user_id, token = learner
    cases = [
        ({"X-Agent-ID": AGENT_ID}, 401, "MISSING_TOKEN"),
        (user_headers("garbage.token.here"), 401, "INVALID_TOKEN"),
        (user_headers(mint_user_token(JWT_SECRET, user_id, "r", AGENT_ID, -5)), 401, "TOKEN_EXPIRED"),
        (user_headers(mint_agent_token(JWT_SECRET, AGENT_ID, 600)), 401, "WRONG_TOKEN_ROLE"),
        (
            user_headers(mint_user_token("other-secret-0123456789abcdef-012345", user_id, "r", AGENT_ID, 60)),
            401,
            "INVALID_TOKEN",
        ),
        (user_headers(token, agent_id=None), 400, "MISSING_AGENT_ID"),
        (user_headers(token, agent_id="   "), 400, "MISSING_AGENT_ID"),
    ]
    for headers, status, code in cases:
        resp = await _call(client, method, path, make_body, user_id, headers)
        assert resp.status == status, (code, await resp.text())
        assert_error(await resp.json(), code)


@pytest.mark.parametrize(("method", "path", "make_body"), USER_ENDPOINTS)
async def test_user_endpoints_forbid_other_users(
    client: TestClient, learner: tuple[str, str], method: str, path: str, make_body: Any
) -> None:
    _, token = learner
    await create_user(client, user_id="someone-else")
    resp = await _call(client, method, path, make_body, "someone-else", user_headers(token))
    assert resp.status == 403
    assert_error(await resp.json(), "FORBIDDEN")


@pytest.mark.parametrize(("method", "path", "make_body"), USER_ENDPOINTS)
async def test_user_endpoints_unknown_user(client: TestClient, method: str, path: str, make_body: Any) -> None:
    token = mint_user_token(JWT_SECRET, "ghost", "r", AGENT_ID, 600)  # valid token, no such user
    resp = await _call(client, method, path, make_body, "ghost", user_headers(token))
    assert resp.status == 404
    assert_error(await resp.json(), "USER_NOT_FOUND")


# ---- POST /api/v1/agent/sessions ------------------------------------------------------------------


async def test_session_shape_and_exactly_once(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    resp = await client.post("/api/v1/agent/sessions", json=session_body(user_id), headers=user_headers(token))
    assert resp.status == 200
    data = await resp.json()
    assert set(data) == SESSION_KEYS
    assert data["success"] is True and data["session_id"] == "sess-1"
    assert data["created_by"] == "agent" and data["agent_id"] == AGENT_ID and ISO_Z.match(data["created_at"])

    again = await client.post("/api/v1/agent/sessions", json=session_body(user_id), headers=user_headers(token))
    assert again.status == 200 and (await again.json())["created_at"] == data["created_at"]
    records = await (await client.get(f"/admin/users/{user_id}/records", headers=ADMIN)).json()
    assert [s["session_id"] for s in records["sessions"]] == ["sess-1"]
    stored = records["sessions"][0]
    assert stored["new_vocabulary"] == [{"word": "hello", "translation": "hola", "language": "es"}]
    assert stored["overall_performance"] == "good" and stored["agent_id"] == AGENT_ID


async def test_session_without_session_id_gets_one(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    body = session_body(user_id, session_id=None)
    resp = await client.post("/api/v1/agent/sessions", json=body, headers=user_headers(token))
    assert resp.status == 200 and (await resp.json())["session_id"].startswith("sess_")


@pytest.mark.parametrize("performance", ["excellent", "good", "fair", "needs_improvement"])
async def test_session_accepts_every_performance(
    client: TestClient, learner: tuple[str, str], performance: str
) -> None:
    user_id, token = learner
    body = session_body(user_id, session_id=f"s-{performance}", overall_performance=performance)
    resp = await client.post("/api/v1/agent/sessions", json=body, headers=user_headers(token))
    assert resp.status == 200


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"overall_performance": "great"}, "INVALID_FIELD"),
        ({"overall_performance": None}, "MISSING_FIELD"),
        ({"duration_minutes": None}, "MISSING_FIELD"),
        ({"duration_minutes": -1}, "INVALID_FIELD"),
        ({"duration_minutes": "30"}, "INVALID_FIELD"),
        ({"topics_covered": "greetings"}, "INVALID_FIELD"),
        ({"new_vocabulary": [{"translation": "hola"}]}, "MISSING_FIELD"),
        ({"new_vocabulary": ["hello"]}, "INVALID_FIELD"),
        ({"new_vocabulary": {"word": "hello"}}, "INVALID_FIELD"),
        ({"pronunciation_practice_count": 1.5}, "INVALID_FIELD"),
        ({"achievements": [""]}, "INVALID_FIELD"),
        ({"next_session_recommendations": [None]}, "INVALID_FIELD"),
        ({"userId": None}, "MISSING_USER_ID"),
    ],
)
async def test_session_validation(client: TestClient, learner: tuple[str, str], extra: Any, code: str) -> None:
    user_id, token = learner
    body = {k: v for k, v in {**session_body(user_id), **extra}.items() if v is not None}
    resp = await client.post("/api/v1/agent/sessions", json=body, headers=user_headers(token))
    assert resp.status == 400
    assert_error(await resp.json(), code)


async def test_session_id_of_another_user_conflicts(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    await create_user(client, user_id="other")
    other_token = await exchange(client, "other")
    resp = await client.post("/api/v1/agent/sessions", json=session_body(user_id), headers=user_headers(token))
    assert resp.status == 200
    resp = await client.post("/api/v1/agent/sessions", json=session_body("other"), headers=user_headers(other_token))
    assert resp.status == 409
    assert_error(await resp.json(), "SESSION_ID_CONFLICT")


# ---- GET /api/v1/agent/user/{user_id}/context -----------------------------------------------------


async def test_context_of_new_user(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    resp = await client.get(f"/api/v1/agent/user/{user_id}/context", headers=user_headers(token))
    assert resp.status == 200
    ctx = await resp.json()
    assert set(ctx) == CONTEXT_KEYS
    assert set(ctx["preferences"]) == PREFERENCE_KEYS and set(ctx["progress"]) == CONTEXT_PROGRESS_KEYS
    assert ctx["progress"]["total_sessions"] == 0 and ctx["progress"]["current_streak"] == 0
    assert ctx["progress"]["last_session_date"] is None and ctx["session_history"] == []
    assert ctx["accessed_by"]["agent_id"] == AGENT_ID and ISO_Z.match(ctx["accessed_by"]["timestamp"])
    assert ISO_Z.match(ctx["created_at"]) and ISO_Z.match(ctx["updated_at"])


async def test_context_aggregates_records(client: TestClient) -> None:
    prefs = {"language_learning": "french", "learning_pace": "fast", "focus_areas": ["pronunciation"]}
    await create_user(client, user_id="agg", preferences=prefs)
    token = await exchange(client, "agg")
    h = user_headers(token)
    # Session A: two running-total updates; only the latest counts.
    for words, phrases, score in ((2, 3, 70), (5, 12, 80)):
        body = progress_body("agg", "A", words_learned=words, phrases_practiced=phrases, pronunciation_score=score)
        assert (await client.post("/api/v1/agent/progress", json=body, headers=h)).status == 200
    body = progress_body("agg", "B", words_learned=1, phrases_practiced=2, pronunciation_score=91, grammar_points=["x"])
    assert (await client.post("/api/v1/agent/progress", json=body, headers=h)).status == 200
    for sid, minutes, topics, ach in (
        ("A", 30, ["greetings"], ["first_conversation"]),
        ("B", 15.5, ["food"], []),
    ):
        body = session_body("agg", sid, duration_minutes=minutes, topics_covered=topics, achievements=ach)
        assert (await client.post("/api/v1/agent/sessions", json=body, headers=h)).status == 200

    ctx = await (await client.get("/api/v1/agent/user/agg/context", headers=h)).json()
    assert ctx["preferences"] == {
        "language_learning": "french",
        "native_language": "english",
        "learning_pace": "fast",
        "focus_areas": ["pronunciation"],
        "session_length_preference": 30,
    }
    p = ctx["progress"]
    assert p["total_sessions"] == 2 and p["total_conversation_time"] == 45.5
    assert p["words_learned"] == 5 + 1 and p["phrases_practiced"] == 12 + 2
    assert p["pronunciation_score_avg"] == round((80 + 91) / 2)
    assert p["grammar_points_covered"] == ["articles", "x", "present_tense"]
    assert p["achievements_unlocked"] == ["first_conversation"]
    assert p["current_streak"] == 1 and ISO_Z.match(p["last_session_date"])
    assert [s["session_id"] for s in ctx["session_history"]] == ["B", "A"]
    assert all(set(s) == HISTORY_KEYS for s in ctx["session_history"])
    assert ctx["session_history"][0]["topics_covered"] == ["food"]
    assert ctx["updated_at"] >= ctx["created_at"]


# ---- POST /api/v1/agent/health --------------------------------------------------------------------


async def test_health_shape(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    resp = await client.post("/api/v1/agent/health", json={"userId": user_id}, headers=user_headers(token))
    assert resp.status == 200
    data = await resp.json()
    assert set(data) == HEALTH_KEYS
    assert data["status"] == "healthy" and data["agent_id"] == AGENT_ID
    assert data["permissions"] == ["user.progress", "session.create", "user.context"]
    assert ISO_Z.match(data["timestamp"])


@pytest.mark.parametrize("body", [{}, {"userId": ""}, None])
async def test_health_missing_user_id_matches_seed(client: TestClient, learner: tuple[str, str], body: Any) -> None:
    _, token = learner
    kwargs = {"json": body} if body is not None else {}
    resp = await client.post("/api/v1/agent/health", headers=user_headers(token), **kwargs)
    assert resp.status == 400
    data = await resp.json()
    assert_error(data, "MISSING_USER_ID")
    assert data["error"]["message"] == "userId is required for agent context validation"


# ---- admin ------------------------------------------------------------------------------------------


async def test_admin_create_user_defaults(client: TestClient) -> None:
    resp = await client.post("/admin/users", json={}, headers=ADMIN)
    assert resp.status == 201
    user = await resp.json()
    assert set(user) == {"user_id", "email", "display_name", "preferences", "created_at", "updated_at"}
    assert re.fullmatch(r"[0-9a-f-]{36}", user["user_id"])
    assert user["preferences"]["learning_pace"] == "moderate" and set(user["preferences"]) == PREFERENCE_KEYS
    got = await client.get(f"/admin/users/{user['user_id']}", headers=ADMIN)
    assert got.status == 200 and await got.json() == user


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"preferences": {"learning_pace": "warp"}}, 400, "INVALID_FIELD"),
        ({"preferences": {"colour": "blue"}}, 400, "INVALID_FIELD"),
        ({"preferences": {"session_length_preference": 0}}, 400, "INVALID_FIELD"),
        ({"preferences": {"focus_areas": "grammar"}}, 400, "INVALID_FIELD"),
        ({"nickname": "x"}, 400, "INVALID_FIELD"),
        ({"user_id": "dup"}, 409, "USER_EXISTS"),
    ],
)
async def test_admin_create_user_errors(client: TestClient, body: Any, status: int, code: str) -> None:
    await create_user(client, user_id="dup")
    resp = await client.post("/admin/users", json=body, headers=ADMIN)
    assert resp.status == status
    assert_error(await resp.json(), code)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/users"),
        ("GET", "/admin/users/x"),
        ("GET", "/admin/users/x/records"),
        ("GET", "/admin/faults"),
        ("POST", "/admin/faults"),
        ("DELETE", "/admin/faults"),
    ],
)
async def test_admin_needs_admin_token(client: TestClient, method: str, path: str) -> None:
    for headers, code in (({}, "MISSING_TOKEN"), ({"Authorization": "Bearer wrong"}, "INVALID_TOKEN")):
        resp = await client.request(method, path, headers=headers, json={})
        assert resp.status == 401
        assert_error(await resp.json(), code)
    agent = {"Authorization": f"Bearer {mint_agent_token(JWT_SECRET, AGENT_ID, 60)}"}
    assert (await client.request(method, path, headers=agent, json={})).status == 401


async def test_admin_records(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    h = user_headers(token)
    await client.post("/api/v1/agent/progress", json=progress_body(user_id), headers=h)
    await client.get(f"/api/v1/agent/user/{user_id}/context", headers=h)
    records = await (await client.get(f"/admin/users/{user_id}/records", headers=ADMIN)).json()
    assert set(records) == {"user_id", "progress_updates", "sessions", "audit"}
    (update,) = records["progress_updates"]
    assert update["session_id"] == "sess-1" and update["agent_id"] == AGENT_ID
    assert update["data"]["status"] == "in_progress" and update["data"]["progress"]["words_learned"] == 5
    assert [a["action"] for a in records["audit"]] == ["user_token", "progress", "context"]
    missing = await client.get("/admin/users/nobody/records", headers=ADMIN)
    assert missing.status == 404
    assert_error(await missing.json(), "USER_NOT_FOUND")


# ---- persistence --------------------------------------------------------------------------------------


async def test_records_survive_a_restart(config: ApiConfig) -> None:
    async with TestClient(TestServer(create_app(config))) as first:
        await create_user(first, user_id="durable")
        token = await exchange(first, "durable")
        h = user_headers(token)
        assert (await first.post("/api/v1/agent/progress", json=progress_body("durable"), headers=h)).status == 200
        assert (await first.post("/api/v1/agent/sessions", json=session_body("durable"), headers=h)).status == 200

    async with TestClient(TestServer(create_app(config))) as second:
        # The user token issued before the restart is still good: same JWT secret.
        ctx = await (await second.get("/api/v1/agent/user/durable/context", headers=user_headers(token))).json()
        assert ctx["progress"]["total_sessions"] == 1 and ctx["progress"]["words_learned"] == 5
        assert [s["session_id"] for s in ctx["session_history"]] == ["sess-1"]
        records = await (await second.get("/admin/users/durable/records", headers=ADMIN)).json()
        assert len(records["progress_updates"]) == 1 and len(records["sessions"]) == 1
        again = await second.post("/api/v1/agent/sessions", json=session_body("durable"), headers=user_headers(token))
        assert again.status == 200
        records = await (await second.get("/admin/users/durable/records", headers=ADMIN)).json()
        assert len(records["sessions"]) == 1


# ---- fault injection ----------------------------------------------------------------------------------


async def test_fault_status_for_n_requests(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    rule = {"status": 503, "count": 2, "path_prefix": "/api/v1/agent/progress"}
    resp = await client.post("/admin/faults", json=rule, headers=ADMIN)
    assert resp.status == 201
    assert (await resp.json())["remaining"] == 2
    h = user_headers(token)
    # Other paths are not affected.
    assert (await client.post("/api/v1/agent/health", json={"userId": user_id}, headers=h)).status == 200
    statuses = []
    for _ in range(3):
        r = await client.post("/api/v1/agent/progress", json=progress_body(user_id), headers=h)
        statuses.append(r.status)
        if r.status == 503:
            assert_error(await r.json(), "SERVICE_UNAVAILABLE")
            assert "Retry-After" not in r.headers
    assert statuses == [503, 503, 200]
    records = await (await client.get(f"/admin/users/{user_id}/records", headers=ADMIN)).json()
    assert len(records["progress_updates"]) == 1  # refused requests stored nothing
    assert (await (await client.get("/admin/faults", headers=ADMIN)).json()) == {"faults": []}


async def test_fault_429_with_retry_after(client: TestClient, learner: tuple[str, str]) -> None:
    user_id, token = learner
    await client.post("/admin/faults", json={"status": 429, "count": 1, "retry_after": 2}, headers=ADMIN)
    r = await client.post("/api/v1/agent/health", json={"userId": user_id}, headers=user_headers(token))
    assert r.status == 429 and r.headers["Retry-After"] == "2"
    assert_error(await r.json(), "TOO_MANY_REQUESTS")
    r = await client.post("/api/v1/agent/health", json={"userId": user_id}, headers=user_headers(token))
    assert r.status == 200


@pytest.mark.parametrize("value", ["\u00b2", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"])
async def test_fault_retry_after_text_is_sent_as_given(
    client: TestClient, learner: tuple[str, str], value: str
) -> None:
    user_id, token = learner
    resp = await client.post("/admin/faults", json={"status": 503, "count": 1, "retry_after": value}, headers=ADMIN)
    assert resp.status == 201
    r = await client.post("/api/v1/agent/health", json={"userId": user_id}, headers=user_headers(token))
    assert r.status == 503 and r.headers["Retry-After"] == value


@pytest.mark.parametrize("value", ["", "x" * 65, "a\r\nX-Injected: 1"])
async def test_fault_retry_after_text_must_be_one_printable_line(client: TestClient, value: str) -> None:
    resp = await client.post("/admin/faults", json={"status": 503, "retry_after": value}, headers=ADMIN)
    assert resp.status == 400 and "retry_after" in (await resp.json())["error"]["message"]


async def test_fault_latency_until_cleared(client: TestClient) -> None:
    resp = await client.post("/admin/faults", json={"latency_ms": 300, "path_prefix": "/api/"}, headers=ADMIN)
    assert resp.status == 201
    listed = await (await client.get("/admin/faults", headers=ADMIN)).json()
    assert [(f["latency_ms"], f["path_prefix"]) for f in listed["faults"]] == [(300, "/api/")]
    for _ in range(2):
        started = time.perf_counter()
        await client.post("/api/v1/agent/health", json={})  # 401, but only after the delay
        assert time.perf_counter() - started >= 0.29
    started = time.perf_counter()
    assert (await client.get("/healthz")).status == 200  # /healthz and /admin are never faulted
    assert time.perf_counter() - started < 0.29
    assert await (await client.delete("/admin/faults", headers=ADMIN)).json() == {"cleared": 1}
    started = time.perf_counter()
    await client.post("/api/v1/agent/health", json={})
    assert time.perf_counter() - started < 0.29


async def test_fault_unlimited_status_until_cleared(client: TestClient) -> None:
    await client.post("/admin/faults", json={"status": 500}, headers=ADMIN)
    for _ in range(3):
        r = await client.post("/api/v1/agent/user-token", json={})
        assert r.status == 500
        assert_error(await r.json(), "INTERNAL_SERVER_ERROR")
    await client.delete("/admin/faults", headers=ADMIN)
    assert (await client.post("/api/v1/agent/user-token", json={})).status == 401


async def test_fault_removed_by_id(client: TestClient) -> None:
    keep = await (
        await client.post("/admin/faults", json={"status": 502, "path_prefix": "/api/x"}, headers=ADMIN)
    ).json()
    drop = await (await client.post("/admin/faults", json={"status": 503}, headers=ADMIN)).json()
    assert (await client.delete(f"/admin/faults/{drop['id']}", headers=ADMIN)).status == 200
    missing = await client.delete(f"/admin/faults/{drop['id']}", headers=ADMIN)
    assert missing.status == 404
    assert_error(await missing.json(), "FAULT_NOT_FOUND")
    listed = await (await client.get("/admin/faults", headers=ADMIN)).json()
    assert [f["id"] for f in listed["faults"]] == [keep["id"]]
    assert (await client.post("/api/v1/agent/user-token", json={})).status == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": 200},
        {"status": 503, "count": 0},
        {"count": 3},
        {"latency_ms": -1},
        {"status": "503"},
        {"status": 503, "path_prefix": "api"},
        {"status": 503, "surprise": True},
    ],
)
async def test_fault_spec_validation(client: TestClient, body: dict[str, Any]) -> None:
    resp = await client.post("/admin/faults", json=body, headers=ADMIN)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] in {"MISSING_FIELD", "INVALID_FIELD"}


# ---- logging ------------------------------------------------------------------------------------------


async def test_access_log_never_contains_tokens(
    client: TestClient, learner: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    user_id, token = learner
    agent_token = mint_agent_token(JWT_SECRET, AGENT_ID, 600)
    with caplog.at_level(logging.DEBUG, logger="loqua_api"):
        body = {"room_name": "r", "user_id": user_id, "agent_id": AGENT_ID}
        resp = await client.post("/api/v1/agent/user-token", json=body, headers=agent_headers(agent_token))
        encrypted = (await resp.json())["encrypted_token"]
        await client.post("/api/v1/agent/progress", json=progress_body(user_id), headers=user_headers(token))
        await client.post("/api/v1/agent/progress", json={}, headers=user_headers("bad." + token))
    lines = [r.getMessage() for r in caplog.records if r.name == "loqua_api"]
    assert any(re.fullmatch(r"POST /api/v1/agent/user-token 200 \d+\.\dms", line) for line in lines)
    for secret in (token, agent_token, encrypted, JWT_SECRET, SHARED_SECRET, ADMIN_TOKEN):
        assert secret not in caplog.text
