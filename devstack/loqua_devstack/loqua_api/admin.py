"""Admin endpoints (bearer ``LOQUA_ADMIN_TOKEN``): users, raw records, fault injection."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from loqua_devstack.loqua_api import auth
from loqua_devstack.loqua_api import validation as v
from loqua_devstack.loqua_api.db import UserExistsError
from loqua_devstack.loqua_api.errors import ApiError
from loqua_devstack.loqua_api.keys import CONFIG, FAULTS, STORE
from loqua_devstack.loqua_api.timeutil import now_iso
from loqua_devstack.loqua_api.tokens import mint_learner_token

LEARNING_PACES = ("slow", "moderate", "fast")
DEFAULT_PREFERENCES: dict[str, Any] = {
    "language_learning": "spanish",
    "native_language": "english",
    "learning_pace": "moderate",
    "focus_areas": ["conversation"],
    "session_length_preference": 30,
}

routes = web.RouteTableDef()


def _preferences(body: dict[str, Any]) -> dict[str, Any]:
    """Seed 003's preference keys, each defaulted when missing."""
    given = v.obj(body, "preferences", required=False) or {}
    v.no_unknown_keys(given, DEFAULT_PREFERENCES, where="preferences")
    name = "preferences.{}".format
    chosen: dict[str, Any] = {
        "language_learning": v.text(given, "language_learning", name=name("language_learning"), required=False),
        "native_language": v.text(given, "native_language", name=name("native_language"), required=False),
        "learning_pace": v.enum(given, "learning_pace", LEARNING_PACES, name=name("learning_pace"), required=False),
        "focus_areas": v.str_list(given, "focus_areas", name=name("focus_areas")),
        "session_length_preference": v.number(
            given,
            "session_length_preference",
            name=name("session_length_preference"),
            minimum=1,
            maximum=240,
            integer=True,
        ),
    }
    return {k: DEFAULT_PREFERENCES[k] if val is None else val for k, val in chosen.items()}


@routes.post("/admin/users")
async def create_user(request: web.Request) -> web.Response:
    auth.require_admin(request)
    body = v.parse_object(await request.read())
    v.no_unknown_keys(body, ("user_id", "email", "display_name", "preferences"), where="user")
    user_id = v.text(body, "user_id", required=False) or str(uuid.uuid4())
    now = now_iso()
    user = {
        "user_id": user_id,
        "email": v.text(body, "email", required=False),
        "display_name": v.text(body, "display_name", required=False) or user_id,
        "preferences": _preferences(body),
        "created_at": now,
        "updated_at": now,
    }
    try:
        await asyncio.to_thread(request.app[STORE].create_user, user)
    except UserExistsError:
        raise ApiError(409, "USER_EXISTS", f"user {user_id!r} already exists") from None
    return web.json_response(user, status=201)


async def _user_or_404(request: web.Request) -> dict[str, Any]:
    user_id = request.match_info["user_id"]
    user = await asyncio.to_thread(request.app[STORE].get_user, user_id)
    if user is None:
        raise ApiError(404, "USER_NOT_FOUND", f"user {user_id!r} not found")
    return user


@routes.get("/admin/users/{user_id}")
async def get_user(request: web.Request) -> web.Response:
    auth.require_admin(request)
    return web.json_response(await _user_or_404(request))


@routes.post("/admin/users/{user_id}/token")
async def sign_in_token(request: web.Request) -> web.Response:
    """The user's sign-in JWT (role ``user``), as a real backend's login would issue it: the learner
    page holds it and calls /api/v1/rooms/join with it. Body (optional): ``{"expires_in": seconds}``."""
    auth.require_admin(request)
    user = await _user_or_404(request)
    body = v.parse_object(await request.read())
    v.no_unknown_keys(body, ("expires_in",), where="the token request")
    config = request.app[CONFIG]
    ttl = v.number(body, "expires_in", minimum=60, maximum=30 * 24 * 3600, integer=True)
    ttl = int(ttl or config.user_token_ttl_seconds)
    token = mint_learner_token(config.jwt_secret, user["user_id"], ttl)
    return web.json_response({"token": token, "token_type": "Bearer", "expires_in": ttl, "user_id": user["user_id"]})


@routes.get("/admin/users/{user_id}/records")
async def user_records(request: web.Request) -> web.Response:
    """Every stored progress update, session record and audited agent action of a user, oldest first."""
    auth.require_admin(request)
    user = await _user_or_404(request)
    store = request.app[STORE]
    user_id = user["user_id"]
    progress, sessions, audit = await asyncio.gather(
        asyncio.to_thread(store.list_progress, user_id),
        asyncio.to_thread(store.list_sessions, user_id),
        asyncio.to_thread(store.list_audit, user_id),
    )
    return web.json_response({"user_id": user_id, "progress_updates": progress, "sessions": sessions, "audit": audit})


@routes.get("/admin/faults")
async def list_faults(request: web.Request) -> web.Response:
    auth.require_admin(request)
    return web.json_response({"faults": [r.to_json() for r in request.app[FAULTS].rules()]})


@routes.post("/admin/faults")
async def add_fault(request: web.Request) -> web.Response:
    auth.require_admin(request)
    rule = request.app[FAULTS].add(v.parse_object(await request.read()))
    return web.json_response(rule.to_json(), status=201)


@routes.delete("/admin/faults")
async def clear_faults(request: web.Request) -> web.Response:
    auth.require_admin(request)
    return web.json_response({"cleared": request.app[FAULTS].clear()})


@routes.delete("/admin/faults/{fault_id}")
async def remove_fault(request: web.Request) -> web.Response:
    auth.require_admin(request)
    fault_id = request.match_info["fault_id"]
    if not fault_id.isdigit() or not request.app[FAULTS].remove(int(fault_id)):
        raise ApiError(404, "FAULT_NOT_FOUND", f"no fault rule {fault_id!r}")
    return web.json_response({"cleared": 1})
