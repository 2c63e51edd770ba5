"""The five agent endpoints of seed 003, with its request and response shapes."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from aiohttp import web

from loqua_devstack.loqua_api import auth
from loqua_devstack.loqua_api import validation as v
from loqua_devstack.loqua_api.context import build_context
from loqua_devstack.loqua_api.crypto import encrypt_token
from loqua_devstack.loqua_api.db import SessionConflictError, Store
from loqua_devstack.loqua_api.errors import ApiError
from loqua_devstack.loqua_api.keys import CONFIG, STORE
from loqua_devstack.loqua_api.timeutil import iso, utcnow
from loqua_devstack.loqua_api.tokens import mint_user_token

PROGRESS_STATUSES = ("in_progress", "completed", "failed")
PERFORMANCE = ("excellent", "good", "fair", "needs_improvement")
PERMISSIONS = ["user.progress", "session.create", "user.context"]
MAX_SESSION_MINUTES = 24 * 60

routes = web.RouteTableDef()


async def _body(request: web.Request) -> dict[str, Any]:
    return v.parse_object(await request.read())


def _new_session_id() -> str:
    """Same form as the learner metadata's ``sessionId``: ``sess_<unix ms>_<random>``."""
    return f"sess_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


async def _existing_user(store: Store, user_id: str) -> dict[str, Any]:
    user = await asyncio.to_thread(store.get_user, user_id)
    if user is None:
        raise ApiError(404, "USER_NOT_FOUND", f"user {user_id!r} not found")
    return user


def _addressed_user(body: dict[str, Any], claims: dict[str, Any], message: str = "userId is required") -> str:
    """The body's ``userId``: present (400), and the subject of the user token (403)."""
    user_id = body.get("userId")
    if user_id is None or (isinstance(user_id, str) and not user_id.strip()):
        raise ApiError(400, "MISSING_USER_ID", message)
    if not isinstance(user_id, str) or len(user_id) > v.MAX_ID_LEN:
        raise ApiError(400, "INVALID_FIELD", f"userId must be a string of at most {v.MAX_ID_LEN} characters")
    auth.require_user(claims, user_id)
    return user_id


@routes.post("/api/v1/agent/user-token")
async def user_token(request: web.Request) -> web.Response:
    auth.agent_claims(request)
    agent_id = auth.agent_id_header(request)
    config, store = request.app[CONFIG], request.app[STORE]
    body = await _body(request)
    room = v.text(body, "room_name")
    user_id = v.text(body, "user_id", missing_code="MISSING_USER_ID")
    body_agent = v.text(body, "agent_id")
    assert room is not None and user_id is not None
    if body_agent != agent_id:
        raise ApiError(400, "AGENT_ID_MISMATCH", "agent_id must equal the X-Agent-ID header")
    await _existing_user(store, user_id)
    now = utcnow()
    ttl = config.user_token_ttl_seconds
    token = mint_user_token(config.jwt_secret, user_id, room, agent_id, ttl, now=int(now.timestamp()))
    encrypted = encrypt_token(token, config.shared_secret, config.pad_byte)
    await asyncio.to_thread(store.record_action, user_id, agent_id, "user_token", iso(now))
    return web.json_response(
        {
            "encrypted_token": encrypted,
            "user_id": user_id,
            "room_name": room,
            "expires_in": ttl,
            "issued_at": iso(now),
            "issued_to": agent_id,
        }
    )


def _progress_values(data: dict[str, Any]) -> dict[str, Any]:
    progress = v.obj(data, "progress", name="data.progress", required=False)
    if progress is None:
        return {}
    values: dict[str, Any] = {
        "words_learned": v.number(progress, "words_learned", name="data.progress.words_learned", integer=True),
        "phrases_practiced": v.number(
            progress, "phrases_practiced", name="data.progress.phrases_practiced", integer=True
        ),
        "pronunciation_score": v.number(
            progress, "pronunciation_score", name="data.progress.pronunciation_score", maximum=100
        ),
        "grammar_points": v.str_list(progress, "grammar_points", name="data.progress.grammar_points"),
    }
    return {k: val for k, val in values.items() if val is not None}


@routes.post("/api/v1/agent/progress")
async def progress(request: web.Request) -> web.Response:
    claims = auth.user_claims(request)
    agent_id = auth.agent_id_header(request)
    store = request.app[STORE]
    body = await _body(request)
    user_id = _addressed_user(body, claims)
    session_id = v.text(body, "sessionId", required=False) or _new_session_id()
    data = v.obj(body, "data")
    assert data is not None
    status = v.enum(data, "status", PROGRESS_STATUSES, name="data.status")
    record = {"status": status, "progress": _progress_values(data)}
    await _existing_user(store, user_id)
    at = iso(utcnow())
    await asyncio.to_thread(store.add_progress, user_id, session_id, agent_id, record, at)
    return web.json_response(
        {
            "success": True,
            "message": "Progress updated successfully",
            "userId": user_id,
            "sessionId": session_id,
            "agentId": agent_id,
            "timestamp": at,
        }
    )


def _vocabulary(body: dict[str, Any]) -> list[dict[str, str]]:
    items = body.get("new_vocabulary")
    if items is None:
        return []
    if not isinstance(items, list) or len(items) > v.MAX_ITEMS:
        raise ApiError(400, "INVALID_FIELD", f"new_vocabulary must be a list of at most {v.MAX_ITEMS} objects")
    words = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, "INVALID_FIELD", f"new_vocabulary[{i}] must be an object")
        word = v.text(item, "word", name=f"new_vocabulary[{i}].word", max_len=v.MAX_TEXT_LEN)
        assert word is not None
        entry = {"word": word}
        for key in ("translation", "language"):
            value = v.text(item, key, name=f"new_vocabulary[{i}].{key}", required=False, max_len=v.MAX_TEXT_LEN)
            if value is not None:
                entry[key] = value
        words.append(entry)
    return words


@routes.post("/api/v1/agent/sessions")
async def sessions(request: web.Request) -> web.Response:
    claims = auth.user_claims(request)
    agent_id = auth.agent_id_header(request)
    store = request.app[STORE]
    body = await _body(request)
    user_id = _addressed_user(body, claims)
    record = {
        "session_id": v.text(body, "sessionId", required=False) or _new_session_id(),
        "user_id": user_id,
        "agent_id": agent_id,
        "duration_minutes": v.number(body, "duration_minutes", required=True, maximum=MAX_SESSION_MINUTES),
        "topics_covered": v.str_list(body, "topics_covered") or [],
        "new_vocabulary": _vocabulary(body),
        "grammar_points": v.str_list(body, "grammar_points") or [],
        "pronunciation_practice_count": v.number(body, "pronunciation_practice_count", integer=True) or 0,
        "overall_performance": v.enum(body, "overall_performance", PERFORMANCE),
        "achievements": v.str_list(body, "achievements") or [],
        "next_session_recommendations": v.str_list(body, "next_session_recommendations") or [],
        "created_at": iso(utcnow()),
    }
    await _existing_user(store, user_id)
    try:
        stored, _created = await asyncio.to_thread(store.add_session, record)
    except SessionConflictError:
        raise ApiError(409, "SESSION_ID_CONFLICT", "sessionId is already used by another user") from None
    return web.json_response(
        {
            "success": True,
            "session_id": stored["session_id"],
            "created_at": stored["created_at"],
            "created_by": "agent",
            "agent_id": stored["agent_id"],
        }
    )


@routes.get("/api/v1/agent/user/{user_id}/context")
async def user_context(request: web.Request) -> web.Response:
    claims = auth.user_claims(request)
    agent_id = auth.agent_id_header(request)
    store = request.app[STORE]
    user_id = request.match_info["user_id"]
    auth.require_user(claims, user_id)
    user = await _existing_user(store, user_id)
    now = utcnow()

    def load() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        store.record_action(user_id, agent_id, "context", iso(now))
        return store.list_progress(user_id), store.list_sessions(user_id)

    progress_rows, session_rows = await asyncio.to_thread(load)
    return web.json_response(build_context(user, progress_rows, session_rows, agent_id, now))


@routes.post("/api/v1/agent/health")
async def health(request: web.Request) -> web.Response:
    claims = auth.user_claims(request)
    agent_id = auth.agent_id_header(request)
    store = request.app[STORE]
    body = await _body(request)
    user_id = _addressed_user(body, claims, "userId is required for agent context validation")
    await _existing_user(store, user_id)
    now = iso(utcnow())
    await asyncio.to_thread(store.record_action, user_id, agent_id, "health", now)
    return web.json_response(
        {"status": "healthy", "agent_id": agent_id, "permissions": list(PERMISSIONS), "timestamp": now}
    )
