"""HS256 JWTs: the agent's service token (role ``agent``) and the learner's token (role ``user``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

ALGORITHM = "HS256"
AGENT_ROLE = "agent"
USER_ROLE = "user"


class TokenError(Exception):
    """A token that must be refused (HTTP 401); ``code`` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def mint_agent_token(jwt_secret: str, agent_id: str, ttl_seconds: int) -> str:
    """The agent's service JWT (``AGENT_JWT_TOKEN``): sub=agent id, role=agent, iat, exp=now+ttl."""
    if not agent_id:
        raise ValueError("agent_id must not be empty")
    now = int(time.time())
    claims = {"sub": agent_id, "role": AGENT_ROLE, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, jwt_secret, algorithm=ALGORITHM)


def mint_user_token(
    jwt_secret: str, user_id: str, room: str, agent_id: str, ttl_seconds: int, now: int | None = None
) -> str:
    """A learner's JWT issued to ``agent_id`` for ``room``: sub=user id, role=user, exp=now+ttl."""
    now = int(time.time()) if now is None else now
    claims = {
        "sub": user_id,
        "role": USER_ROLE,
        "room": room,
        "agent_id": agent_id,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, jwt_secret, algorithm=ALGORITHM)


def mint_learner_token(jwt_secret: str, user_id: str, ttl_seconds: int, now: int | None = None) -> str:
    """A learner's own sign-in JWT (what the learner page holds): sub=user id, role=user, exp=now+ttl.
    Unlike the agent's copy it names no room and no agent."""
    now = int(time.time()) if now is None else now
    claims = {"sub": user_id, "role": USER_ROLE, "iat": now, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, jwt_secret, algorithm=ALGORITHM)


def verify_token(jwt_secret: str, token: str, role: str) -> dict[str, Any]:
    """Check signature, expiry and role; return the claims or raise :class:`TokenError`."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, jwt_secret, algorithms=[ALGORITHM], options={"require": ["sub", "role", "iat", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("TOKEN_EXPIRED", "the bearer token has expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("INVALID_TOKEN", "the bearer token is malformed or its signature is invalid") from None
    if claims.get("role") != role:
        raise TokenError("WRONG_TOKEN_ROLE", f"this endpoint needs a {role} token")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenError("INVALID_TOKEN", "the bearer token has no subject")
    return claims
