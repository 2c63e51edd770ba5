"""Smoke test of the running reference Loqua API of the local stack, over HTTP with httpx.

Every endpoint of seed 003 with its exact response keys, every error code, the admin endpoints and
fault injection. The issued user token is decrypted here from the cryptography primitives. Faults are
scoped to paths of this test's own user, so other tests sharing the stack are not disturbed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from base64 import urlsafe_b64decode
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.seed_contract import (
    CONTEXT_KEYS,
    CONTEXT_PROGRESS_KEYS,
    HEALTH_KEYS,
    ISO_Z,
    PROGRESS_KEYS,
    SESSION_KEYS,
    USER_TOKEN_KEYS,
    example_session_body,
    independent_decrypt,
)

pytestmark = pytest.mark.integration


def pad_byte_of(setting: str) -> int:
    """``SHARED_SECRET_PAD_BYTE`` as documented: ``0x..`` hex, one character, or empty for NUL."""
    if not setting:
        return 0
    return int(setting, 16) if setting.lower().startswith("0x") else ord(setting)


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT (the server checks the signature when the token is used)."""
    header, payload, signature = token.split(".")
    assert header and signature
    return json.loads(urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "timestamp"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and ISO_Z.match(body["timestamp"])


@pytest.fixture(scope="module")
def api(stack_env: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack_env["LOQUA_API_URL"], timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def admin(stack_env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack_env['LOQUA_ADMIN_TOKEN']}"}


@pytest.fixture(scope="module")
def agent(stack_env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack_env['AGENT_JWT_TOKEN']}", "X-Agent-ID": stack_env["AGENT_ID"]}


def new_user(api: httpx.Client, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("user_id", f"smoke-{uuid.uuid4().hex[:12]}")
    resp = api.post("/admin/users", json=body, headers=admin)
    assert resp.status_code == 201, resp.text
    return resp.json()


def exchange(api: httpx.Client, env: dict[str, str], user_id: str, room: str) -> httpx.Response:
    body = {"room_name": room, "user_id": user_id, "agent_id": env["AGENT_ID"]}
    headers = {"Authorization": f"Bearer {env['AGENT_JWT_TOKEN']}", "X-Agent-ID": env["AGENT_ID"]}
    return api.post("/api/v1/agent/user-token", json=body, headers=headers)


@pytest.fixture(scope="module")
def learner(api: httpx.Client, admin: dict[str, str], stack_env: dict[str, str]) -> tuple[str, str]:
    """A user of this module and its decrypted user JWT."""
    user = new_user(api, admin, display_name="Smoke Learner", preferences={"learning_pace": "slow"})
    resp = exchange(api, stack_env, user["user_id"], "smoke-room")
    assert resp.status_code == 200, resp.text
    token = independent_decrypt(
        resp.json()["encrypted_token"],
        stack_env["SHARED_SECRET"],
        pad_byte_of(stack_env["SHARED_SECRET_PAD_BYTE"]),
    )
    return user["user_id"], token


def as_user(token: str, env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Agent-ID": env["AGENT_ID"]}


def test_healthz(api: httpx.Client) -> None:
    resp = api.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def test_user_token_exchange(api: httpx.Client, admin: dict[str, str], stack_env: dict[str, str]) -> None:
    user = new_user(api, admin)
    resp = exchange(api, stack_env, user["user_id"], "room-smoke-1")
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert set(data) == USER_TOKEN_KEYS
    assert data["user_id"] == user["user_id"] and data["room_name"] == "room-smoke-1"
    assert data["issued_to"] == stack_env["AGENT_ID"] and ISO_Z.match(data["issued_at"])
    assert isinstance(data["expires_in"], int) and data["expires_in"] > 0
    assert re.fullmatch(r"[0-9a-f]{32}:([0-9a-f]{32})+", data["encrypted_token"])
    token = independent_decrypt(
        data["encrypted_token"], stack_env["SHARED_SECRET"], pad_byte_of(stack_env["SHARED_SECRET_PAD_BYTE"])
    )
    claims = jwt_claims(token)
    assert claims["sub"] == user["user_id"] and claims["role"] == "user"
    assert claims["room"] == "room-smoke-1" and claims["agent_id"] == stack_env["AGENT_ID"]
    assert claims["exp"] - claims["iat"] == data["expires_in"]


def test_session_flow(
    api: httpx.Client, admin: dict[str, str], stack_env: dict[str, str], learner: tuple[str, str]
) -> None:
    user_id, token = learner
    h = as_user(token, stack_env)
    agent_id = stack_env["AGENT_ID"]

    health = api.post("/api/v1/agent/health", json={"userId": user_id}, headers=h)
    assert health.status_code == 200 and set(health.json()) == HEALTH_KEYS
    assert health.json()["status"] == "healthy" and health.json()["agent_id"] == agent_id
    assert health.json()["permissions"] == ["user.progress", "session.create", "user.context"]

    ctx = api.get(f"/api/v1/agent/user/{user_id}/context", headers=h)
    assert ctx.status_code == 200 and set(ctx.json()) == CONTEXT_KEYS
    assert ctx.json()["preferences"]["learning_pace"] == "slow"
    assert ctx.json()["progress"]["total_sessions"] == 0

    session_id = f"sess_smoke_{uuid.uuid4().hex[:8]}"
    for words in (2, 5):
        body = {
            "userId": user_id,
            "sessionId": session_id,
            "data": {
                "status": "in_progress",
                "progress": {
                    "words_learned": words,
                    "phrases_practiced": 12,
                    "pronunciation_score": 85,
                    "grammar_points": ["present_tense", "articles"],
                },
            },
        }
        resp = api.post("/api/v1/agent/progress", json=body, headers=h)
        assert resp.status_code == 200 and set(resp.json()) == PROGRESS_KEYS
        assert resp.json()["message"] == "Progress updated successfully"
        assert (resp.json()["userId"], resp.json()["sessionId"], resp.json()["agentId"]) == (
            user_id,
            session_id,
            agent_id,
        )

    record = example_session_body(user_id, session_id)
    for _ in range(2):  # a retried session record is stored once
        resp = api.post("/api/v1/agent/sessions", json=record, headers=h)
        assert resp.status_code == 200 and set(resp.json()) == SESSION_KEYS
        assert resp.json()["session_id"] == session_id and resp.json()["created_by"] == "agent"

    ctx = api.get(f"/api/v1/agent/user/{user_id}/context", headers=h).json()
    assert set(ctx["progress"]) == CONTEXT_PROGRESS_KEYS
    assert ctx["progress"]["total_sessions"] == 1 and ctx["progress"]["total_conversation_time"] == 30
    assert ctx["progress"]["words_learned"] == 5 and ctx["progress"]["current_streak"] == 1
    assert ctx["session_history"][0]["session_id"] == session_id
    assert ctx["accessed_by"]["agent_id"] == agent_id

    records = api.get(f"/admin/users/{user_id}/records", headers=admin).json()
    assert [s["session_id"] for s in records["sessions"]] == [session_id]
    assert len(records["progress_updates"]) == 2


def test_error_codes(
    api: httpx.Client,
    admin: dict[str, str],
    agent: dict[str, str],
    stack_env: dict[str, str],
    learner: tuple[str, str],
) -> None:
    user_id, token = learner
    h = as_user(token, stack_env)
    agent_id = stack_env["AGENT_ID"]
    token_body = {"room_name": "r", "user_id": user_id, "agent_id": agent_id}
    tok = "/api/v1/agent/user-token"

    # user-token: 401 / 400 / 404
    assert_error(api.post(tok, json=token_body, headers={"X-Agent-ID": agent_id}), 401, "MISSING_TOKEN")
    assert_error(
        api.post(tok, json=token_body, headers={**agent, "Authorization": "Bearer x.y.z"}),
        401,
        "INVALID_TOKEN",
    )
    assert_error(api.post(tok, json=token_body, headers=h), 401, "WRONG_TOKEN_ROLE")
    assert_error(
        api.post(tok, json=token_body, headers={"Authorization": agent["Authorization"]}),
        400,
        "MISSING_AGENT_ID",
    )
    assert_error(api.post(tok, json={"room_name": "r", "agent_id": agent_id}, headers=agent), 400, "MISSING_USER_ID")
    assert_error(api.post(tok, json={**token_body, "user_id": "no-such-user-x"}, headers=agent), 404, "USER_NOT_FOUND")

    # user endpoints
    health = "/api/v1/agent/health"
    assert_error(api.post(health, json={"userId": user_id}, headers=agent), 401, "WRONG_TOKEN_ROLE")
    assert_error(api.post(health, json={"userId": user_id}, headers={"X-Agent-ID": agent_id}), 401, "MISSING_TOKEN")
    assert_error(
        api.post(health, json={"userId": user_id}, headers={"Authorization": h["Authorization"]}),
        400,
        "MISSING_AGENT_ID",
    )
    missing = api.post(health, json={}, headers=h)
    assert_error(missing, 400, "MISSING_USER_ID")
    assert missing.json()["error"]["message"] == "userId is required for agent context validation"

    other = new_user(api, admin)["user_id"]
    assert_error(api.get(f"/api/v1/agent/user/{other}/context", headers=h), 403, "FORBIDDEN")
    assert_error(api.post(health, json={"userId": other}, headers=h), 403, "FORBIDDEN")

    bad_status = {"userId": user_id, "sessionId": "s", "data": {"status": "done"}}
    assert_error(api.post("/api/v1/agent/progress", json=bad_status, headers=h), 400, "INVALID_FIELD")
    bad_score = {
        "userId": user_id,
        "data": {"status": "in_progress", "progress": {"pronunciation_score": 101}},
    }
    assert_error(api.post("/api/v1/agent/progress", json=bad_score, headers=h), 400, "INVALID_FIELD")
    bad_perf = {"userId": user_id, "duration_minutes": 5, "overall_performance": "great"}
    assert_error(api.post("/api/v1/agent/sessions", json=bad_perf, headers=h), 400, "INVALID_FIELD")
    assert_error(api.post("/api/v1/agent/sessions", json={"userId": user_id}, headers=h), 400, "MISSING_FIELD")

    # admin
    assert_error(api.get("/admin/faults"), 401, "MISSING_TOKEN")
    assert_error(api.get("/admin/faults", headers={"Authorization": "Bearer nope"}), 401, "INVALID_TOKEN")
    assert_error(api.get("/admin/users/no-such-user-x/records", headers=admin), 404, "USER_NOT_FOUND")


def test_expired_user_token(api: httpx.Client, stack_env: dict[str, str], learner: tuple[str, str]) -> None:
    jwt_secret = stack_env.get("LOQUA_JWT_SECRET")
    if not jwt_secret:
        pytest.skip("LOQUA_JWT_SECRET is not in the stack settings")
    import jwt  # PyJWT

    user_id, _ = learner
    now = int(time.time())
    claims = {
        "sub": user_id,
        "role": "user",
        "room": "r",
        "agent_id": stack_env["AGENT_ID"],
        "iat": now - 20,
        "exp": now - 10,
    }
    expired = jwt.encode(claims, jwt_secret, algorithm="HS256")
    resp = api.post("/api/v1/agent/health", json={"userId": user_id}, headers=as_user(expired, stack_env))
    assert_error(resp, 401, "TOKEN_EXPIRED")


def test_fault_injection(
    api: httpx.Client, admin: dict[str, str], stack_env: dict[str, str], learner: tuple[str, str]
) -> None:
    user_id, token = learner
    h = as_user(token, stack_env)
    path = f"/api/v1/agent/user/{user_id}/context"  # only this test's user is affected
    rules = [
        {"status": 503, "count": 1, "path_prefix": path},
        {"status": 429, "count": 1, "retry_after": 1, "path_prefix": path},
    ]
    for rule in rules:
        resp = api.post("/admin/faults", json=rule, headers=admin)
        assert resp.status_code == 201 and resp.json()["remaining"] == 1
    assert_error(api.get(path, headers=h), 503, "SERVICE_UNAVAILABLE")
    limited = api.get(path, headers=h)
    assert_error(limited, 429, "TOO_MANY_REQUESTS")
    assert limited.headers["Retry-After"] == "1"
    assert api.get(path, headers=h).status_code == 200

    slow = api.post("/admin/faults", json={"latency_ms": 400, "path_prefix": path}, headers=admin).json()
    try:
        assert slow["id"] in [f["id"] for f in api.get("/admin/faults", headers=admin).json()["faults"]]
        started = time.perf_counter()
        assert api.get(path, headers=h).status_code == 200
        assert time.perf_counter() - started >= 0.39
    finally:
        assert api.delete(f"/admin/faults/{slow['id']}", headers=admin).status_code == 200
    started = time.perf_counter()
    assert api.get(path, headers=h).status_code == 200
    assert time.perf_counter() - started < 0.39
