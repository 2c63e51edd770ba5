"""Settings of the reference API, read from the environment; a bad setting names itself."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loqua_common.tokenkey import PAD_BYTE_SETTING, parse_pad_byte

DEFAULT_USER_TOKEN_TTL_SECONDS = 3600
DEFAULT_DISPATCH_NAMESPACE = "default"
DEFAULT_DISPATCH_WAIT_SECONDS = 10.0
DEFAULT_LIVEKIT_TOKEN_TTL_SECONDS = 6 * 3600
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
ENV_SECRETS = {"dev": "DEV_AGENT_SECRET", "staging": "STAGING_AGENT_SECRET", "prod": "PROD_AGENT_SECRET"}


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the variable."""


@dataclass(frozen=True)
class ApiConfig:
    db_path: Path
    jwt_secret: str = field(repr=False)
    shared_secret: str = field(repr=False)
    admin_token: str = field(repr=False)
    pad_byte: int = 0x00
    user_token_ttl_seconds: int = DEFAULT_USER_TOKEN_TTL_SECONDS
    rooms: RoomsConfig | None = None  # None: the /rooms routes answer 503 ROOMS_NOT_CONFIGURED


@dataclass(frozen=True)
class RoomsConfig:
    """The web backend's settings: LiveKit for learner tokens, Kubernetes for AgentDispatch objects."""

    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str = field(repr=False)
    namespace: str = DEFAULT_DISPATCH_NAMESPACE
    kubeconfig: Path | None = None  # None: in-cluster ServiceAccount credentials
    dispatch_wait_seconds: float = DEFAULT_DISPATCH_WAIT_SECONDS
    dispatch_ttl_seconds: int | None = None  # None: the operator's AGENT_TTL_SECONDS applies
    livekit_token_ttl_seconds: int = DEFAULT_LIVEKIT_TOKEN_TTL_SECONDS


def _required(env: Mapping[str, str], name: str, why: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ConfigError(f"{name} is not set: {why}")
    return value


def _shared_secret(env: Mapping[str, str]) -> str:
    """``SHARED_SECRET``, else the secret of the environment named by ``LOQUA_ENV`` (dev|staging|prod)."""
    if env.get("SHARED_SECRET"):
        return env["SHARED_SECRET"]
    loqua_env = env.get("LOQUA_ENV", "") or "dev"
    if loqua_env not in ENV_SECRETS:
        raise ConfigError(f"LOQUA_ENV must be one of {', '.join(ENV_SECRETS)}, got {loqua_env!r}")
    name = ENV_SECRETS[loqua_env]
    if not env.get(name):
        raise ConfigError(
            f"SHARED_SECRET is not set (nor {name} for LOQUA_ENV={loqua_env}): "
            "the secret that encrypts user tokens for the agent"
        )
    return env[name]


def _number(env: Mapping[str, str], name: str, default: float | None, low: float, high: float) -> float | None:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        raise ConfigError(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}")
    return value


def load_rooms_config(env: Mapping[str, str]) -> RoomsConfig | None:
    """The /rooms settings; None when ``LIVEKIT_URL`` is unset (the agent endpoints still work)."""
    url = env.get("LIVEKIT_URL", "")
    if not url:
        return None
    if not url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ConfigError(f"LIVEKIT_URL must be a ws:// or wss:// URL, got {url!r}")
    why = "LiveKit API credentials that sign learner tokens for /api/v1/rooms/join"
    key = _required(env, "LIVEKIT_API_KEY", why)
    secret = _required(env, "LIVEKIT_API_SECRET", why)
    namespace = env.get("DISPATCH_NAMESPACE", "") or DEFAULT_DISPATCH_NAMESPACE
    if not DNS_LABEL.fullmatch(namespace) or len(namespace) > 63:
        raise ConfigError(f"DISPATCH_NAMESPACE must be a namespace name (DNS label), got {namespace!r}")
    kubeconfig = Path(env["KUBECONFIG"]) if env.get("KUBECONFIG") else None
    if kubeconfig is not None and not kubeconfig.is_file():
        raise ConfigError(f"KUBECONFIG names {str(kubeconfig)!r}, which is not a file")
    wait = _number(env, "JOIN_DISPATCH_WAIT_SECONDS", DEFAULT_DISPATCH_WAIT_SECONDS, 0, 120)
    ttl = _number(env, "DISPATCH_TTL_SECONDS", None, 0, 86400)
    lk_ttl = _number(env, "LIVEKIT_TOKEN_TTL_SECONDS", DEFAULT_LIVEKIT_TOKEN_TTL_SECONDS, 60, 86400)
    return RoomsConfig(
        livekit_url=url,
        livekit_api_key=key,
        livekit_api_secret=secret,
        namespace=namespace,
        kubeconfig=kubeconfig,
        dispatch_wait_seconds=float(wait or 0),
        dispatch_ttl_seconds=None if ttl is None else int(ttl),
        livekit_token_ttl_seconds=int(lk_ttl or DEFAULT_LIVEKIT_TOKEN_TTL_SECONDS),
    )


def load_config(env: Mapping[str, str], db_path: Path) -> ApiConfig:
    jwt_secret = _required(env, "LOQUA_JWT_SECRET", "the HS256 key that signs agent and user JWTs")
    admin_token = _required(env, "LOQUA_ADMIN_TOKEN", "the bearer token of the /admin endpoints")
    shared_secret = _shared_secret(env)
    try:
        pad_byte = parse_pad_byte(env.get(PAD_BYTE_SETTING))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    raw_ttl = env.get("USER_TOKEN_TTL_SECONDS", "") or str(DEFAULT_USER_TOKEN_TTL_SECONDS)
    try:
        ttl = int(raw_ttl)
    except ValueError:
        ttl = 0
    if ttl <= 0:
        raise ConfigError(f"USER_TOKEN_TTL_SECONDS must be a positive integer, got {raw_ttl!r}")
    return ApiConfig(
        db_path=db_path,
        jwt_secret=jwt_secret,
        shared_secret=shared_secret,
        admin_token=admin_token,
        pad_byte=pad_byte,
        user_token_ttl_seconds=ttl,
        rooms=load_rooms_config(env),
    )
