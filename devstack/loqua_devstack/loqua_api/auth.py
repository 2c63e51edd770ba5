"""Request authentication: bearer JWTs by role, the ``X-Agent-ID`` header, the admin token."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from loqua_devstack.loqua_api.errors import ApiError
from loqua_devstack.loqua_api.keys import CONFIG
from loqua_devstack.loqua_api.tokens import AGENT_ROLE, USER_ROLE, TokenError, verify_token
from loqua_devstack.loqua_api.validation import MAX_ID_LEN

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "MISSING_TOKEN", "an Authorization: Bearer token is required", _CHALLENGE)
    return token.strip()


def _claims(request: web.Request, role: str) -> dict[str, Any]:
    try:
        return verify_token(request.app[CONFIG].jwt_secret, bearer(request), role)
    except TokenError as err:
        raise ApiError(401, err.code, err.message, _CHALLENGE) from None


def agent_claims(request: web.Request) -> dict[str, Any]:
    return _claims(request, AGENT_ROLE)


def user_claims(request: web.Request) -> dict[str, Any]:
    return _claims(request, USER_ROLE)


def agent_id_header(request: web.Request) -> str:
    agent_id = request.headers.get("X-Agent-ID", "").strip()
    if not agent_id:
        raise ApiError(400, "MISSING_AGENT_ID", "the X-Agent-ID header is required")
    if len(agent_id) > MAX_ID_LEN:
        raise ApiError(400, "INVALID_AGENT_ID", f"X-Agent-ID must be at most {MAX_ID_LEN} characters")
    return agent_id


def require_user(claims: dict[str, Any], user_id: str) -> None:
    """A user token only acts for its own subject."""
    if claims["sub"] != user_id:
        raise ApiError(403, "FORBIDDEN", "the user token does not belong to the addressed user")


def require_admin(request: web.Request) -> None:
    token = bearer(request)
    if not hmac.compare_digest(token.encode(), request.app[CONFIG].admin_token.encode()):
        raise ApiError(401, "INVALID_TOKEN", "the admin token is not valid", _CHALLENGE)
