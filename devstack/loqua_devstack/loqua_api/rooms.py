"""The learner's endpoints: ``POST /api/v1/rooms/join`` (seed 003) and ``GET /api/v1/rooms/{room}/agent``
(seed 000's agent status).

A join is what a page load does: it ensures the room's AgentDispatch (server-side apply, one object
per (room, agent name), so refreshes make no second one), waits a bounded time for the operator to
bind it, and hands back a LiveKit token whose attributes carry the learner (seed 003's keys).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import time
from typing import Any

from aiohttp import web
from livekit import api

from loqua_devstack.loqua_api import auth
from loqua_devstack.loqua_api import validation as v
from loqua_devstack.loqua_api.config import RoomsConfig
from loqua_devstack.loqua_api.dispatches import (
    AGENT_NAME_MAX,
    AGENT_NAME_RE,
    ROOM_MAX,
    ROOM_RE,
    Dispatches,
    DispatchView,
    KubeUnavailableError,
)
from loqua_devstack.loqua_api.errors import ApiError
from loqua_devstack.loqua_api.keys import CONFIG, DISPATCHES, STORE
from loqua_devstack.loqua_api.timeutil import iso, utcnow

# How long a join waits for an object that is being deleted (TTL expiry) to go before re-creating it.
DELETING_WAIT_SECONDS = 15.0

routes = web.RouteTableDef()


def _rooms(request: web.Request) -> tuple[RoomsConfig, Dispatches]:
    config = request.app[CONFIG].rooms
    if config is None or DISPATCHES not in request.app:
        raise ApiError(
            503,
            "ROOMS_NOT_CONFIGURED",
            "this API has no LiveKit/Kubernetes settings (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, "
            "KUBECONFIG); see docs/loqua-api.md",
        )
    return config, request.app[DISPATCHES]


def _name(value: Any, field: str, max_len: int, pattern: re.Pattern[str], rule: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ApiError(400, "MISSING_FIELD", f"{field} is required")
    if not isinstance(value, str) or len(value) > max_len or not pattern.fullmatch(value):
        raise ApiError(400, "INVALID_FIELD", f"{field} must be {rule}")
    return value


def room_name(value: Any, field: str = "room_name") -> str:
    """A room name as the AgentDispatch CRD accepts it (1-128 chars, ``^[A-Za-z0-9][A-Za-z0-9_.:-]*$``)."""
    rule = f"1-{ROOM_MAX} characters: letters, digits and _ . : - (starting with a letter or digit)"
    return _name(value, field, ROOM_MAX, ROOM_RE, rule)


def agent_name(value: Any, field: str = "agent_name") -> str:
    """An agent name as workers register it and the CRD accepts it: a DNS label."""
    rule = (
        f"a DNS label: at most {AGENT_NAME_MAX} lowercase letters, digits and '-', "
        "starting and ending with a letter or digit"
    )
    return _name(value, field, AGENT_NAME_MAX, AGENT_NAME_RE, rule)


def dispatch_json(view: DispatchView, reused: bool) -> dict[str, Any]:
    return {"name": view.name, "dispatchId": view.dispatch_id, "reused": reused, "phase": view.phase}


def _unavailable(err: KubeUnavailableError) -> ApiError:
    return ApiError(
        503, "KUBERNETES_UNAVAILABLE", f"could not ensure the room's AgentDispatch: {err.reason}", {"Retry-After": "2"}
    )


async def _ensure(dispatches: Dispatches, room: str, agent: str, ttl: int | None) -> tuple[DispatchView, bool]:
    """Apply the object; if the one found is being deleted (its TTL just ran out), wait for it to go
    and apply again, so the learner gets a live object and a dispatch of its own."""
    view, created = await dispatches.apply(room, agent, ttl)
    if not view.deleting:
        return view, created
    deadline = time.monotonic() + DELETING_WAIT_SECONDS
    while time.monotonic() < deadline:
        current = await dispatches.get_by_name(view.name)
        if current is None or not current.deleting:
            break
        await asyncio.sleep(0.25)
    else:
        raise ApiError(
            503,
            "DISPATCH_ENDING",
            "the room's previous AgentDispatch is still being deleted; retry",
            {"Retry-After": "2"},
        )
    return await dispatches.apply(room, agent, ttl)


def learner_token(config: RoomsConfig, room: str, identity: str, name: str, attributes: dict[str, str]) -> str:
    return (
        api.AccessToken(config.livekit_api_key, config.livekit_api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_attributes(attributes)
        .with_ttl(dt.timedelta(seconds=config.livekit_token_ttl_seconds))
        .with_grants(
            api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True)
        )
        .to_jwt()
    )


@routes.post("/api/v1/rooms/join")
async def join(request: web.Request) -> web.Response:
    claims = auth.user_claims(request)
    config, dispatches = _rooms(request)
    store = request.app[STORE]
    body = v.parse_object(await request.read())
    v.no_unknown_keys(body, ("room_name", "agent_name"), where="the join request")
    room = room_name(body.get("room_name"))
    agent = agent_name(body.get("agent_name"))
    user_id = claims["sub"]
    user = await asyncio.to_thread(store.get_user, user_id)
    if user is None:
        raise ApiError(404, "USER_NOT_FOUND", f"user {user_id!r} not found")
    try:
        view, created = await _ensure(dispatches, room, agent, config.dispatch_ttl_seconds)
        # Seed 000's `reused`: this join found a dispatch to join rather than starting a new agent
        # (the object existed already, or the operator bound it to a dispatch LiveKit already had).
        view = await dispatches.wait_bound(view, config.dispatch_wait_seconds)
    except KubeUnavailableError as err:
        raise _unavailable(err) from None
    reused = not created or bool(view.status.get("reused"))
    now = utcnow()
    session_id = await asyncio.to_thread(
        store.learner_session, view.uid, user_id, f"sess_{int(now.timestamp() * 1000)}_{secrets.token_hex(4)}", iso(now)
    )
    attributes = {"user_id": user_id, "sessionId": session_id, "display_name": user["display_name"]}
    if user.get("email"):
        attributes["email"] = user["email"]
    identity = f"learner-{user_id}-{secrets.token_hex(3)}"
    token = learner_token(config, room, identity, user["display_name"], attributes)
    return web.json_response(
        {"url": config.livekit_url, "token": token, "room": room, "dispatch": dispatch_json(view, reused)}
    )


@routes.get("/api/v1/rooms/{room}/agent")
async def agent_status(request: web.Request) -> web.Response:
    auth.user_claims(request)
    _config, dispatches = _rooms(request)
    room = room_name(request.match_info["room"], "room")
    agent = agent_name(request.query.get("agent_name"), "agent_name (query parameter)")
    try:
        view = await dispatches.get(room, agent)
    except KubeUnavailableError as err:
        raise _unavailable(err) from None
    if view is None:
        raise ApiError(
            404,
            "DISPATCH_NOT_FOUND",
            f"no AgentDispatch for room {room!r} and agent {agent!r}: POST /api/v1/rooms/join creates it",
        )
    st = view.status
    return web.json_response(
        {
            "room": room,
            "agent_name": agent,
            "dispatch": dispatch_json(view, bool(st.get("reused"))),
            "agentPresent": bool(st.get("agentPresent")),
            "learners": int(st.get("participants") or 0),
            "lastActivityTime": st.get("lastActivityTime"),
            "idleSince": st.get("idleSince"),
            "expiresAt": st.get("expiresAt"),
            "redispatches": int(st.get("redispatches") or 0),
            "lastError": st.get("lastError"),
            "deleting": view.deleting,
        }
    )
