"""Settings of the reference API, read from the environment; a bad setting names itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loqua_common.tokenkey import PAD_BYTE_SETTING, parse_pad_byte

DEFAULT_USER_TOKEN_TTL_SECONDS = 3600
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
    )
