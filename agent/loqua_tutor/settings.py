"""Tutor worker settings, read from the environment (the Helm chart's values end up here).

Load them with ``loqua_common.settings.load_settings(TutorSettings)``: a missing or invalid
setting stops the worker at start with a message naming the environment variable, and secret
values are ``SecretStr`` so they are never echoed.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loqua_common.tokenkey import parse_pad_byte
from loqua_tutor.tiers import TIERS, Tier

ENV_SECRETS = {"dev": "DEV_AGENT_SECRET", "staging": "STAGING_AGENT_SECRET", "prod": "PROD_AGENT_SECRET"}

STT_PROVIDERS = ("", "openai", "deepgram")
LLM_PROVIDERS = ("", "openai")
TTS_PROVIDERS = ("", "openai", "deepgram", "cartesia", "elevenlabs")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class TutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # ---- Loqua API ---------------------------------------------------------------------------
    agent_jwt_token: SecretStr = Field(description="the agent's service JWT (from the Loqua admin)")
    agent_id: str = Field(description="agent identifier sent as X-Agent-ID, e.g. loqua-spanish-tutor")
    api_base_url: str = Field(description="Loqua API base URL, e.g. https://api.loqua.app")
    loqua_env: Literal["dev", "staging", "prod"] = Field(
        "dev", description="selects DEV_/STAGING_/PROD_AGENT_SECRET when SHARED_SECRET is unset"
    )
    dev_agent_secret: SecretStr | None = None
    staging_agent_secret: SecretStr | None = None
    prod_agent_secret: SecretStr | None = None
    # Declared after the environment-specific secrets: its validator falls back to them.
    shared_secret: SecretStr | None = Field(
        None, validate_default=True, description="secret that encrypts user tokens (shared with the API)"
    )
    shared_secret_pad_byte: str = Field(
        "0x00", description="byte that pads the secret to 32 bytes: 0x.. or one ASCII character"
    )
    api_timeout_seconds: float = Field(10.0, gt=0, le=120, description="per-request timeout")
    api_max_retries: int = Field(3, ge=0, le=3, description="retries on network errors, 5xx and 429")
    api_retry_base_seconds: float = Field(0.5, gt=0, le=30, description="first retry delay; doubles")
    breaker_failure_threshold: int = Field(5, ge=1, le=1000)
    breaker_reset_seconds: float = Field(30.0, gt=0, le=3600)
    context_cache_ttl_seconds: float = Field(300.0, gt=0, le=86400)
    token_refresh_margin_seconds: float = Field(300.0, ge=0, le=3600)

    # ---- LiveKit -----------------------------------------------------------------------------
    livekit_url: str = Field(description="LiveKit server URL (ws://, wss://, http:// or https://)")
    livekit_api_key: SecretStr = Field(description="LiveKit API key")
    livekit_api_secret: SecretStr = Field(description="LiveKit API secret")
    agent_name: str = Field("", description="explicit-dispatch agent name; empty = automatic dispatch")

    # ---- capacity and lifecycle --------------------------------------------------------------
    tier: Tier = Tier.BASIC_CONVERSATION
    max_concurrent_sessions: int | None = Field(None, ge=1, le=1000, description="default from TIER")
    participant_wait_timeout_seconds: float = Field(45.0, gt=0, le=3600)
    progress_interval_seconds: float = Field(30.0, gt=0, le=3600)
    drain_timeout_seconds: int = Field(600, ge=1, le=86400, description="SIGTERM: wait this long for jobs")
    finalize_timeout_seconds: float = Field(
        30.0, ge=1, le=600, description="budget for the final progress update and session record"
    )
    job_executor: Literal["process", "thread"] = "process"
    num_idle_processes: int | None = Field(None, ge=0, le=64, description="warm job processes")

    # ---- voice pipeline (empty = text-free mode) ----------------------------------------------
    stt_provider: str = ""
    llm_provider: str = ""
    tts_provider: str = ""
    stt_model: str = ""
    llm_model: str = ""
    tts_model: str = ""
    tts_voice: str = ""

    # ---- observability -----------------------------------------------------------------------
    metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus /metrics and /healthz")
    health_port: int = Field(8081, ge=0, le=65535, description="livekit-agents worker HTTP (health)")
    http_host: str = Field("0.0.0.0", description="address the metrics and health servers bind")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_rate_limit: float = Field(400.0, gt=0, description="log lines per second before dropping")
    region: str = Field("local", min_length=1, max_length=63)
    prometheus_multiproc_dir: str = Field(
        "", description="metrics directory shared with job processes (default: a fresh temp dir)"
    )

    @field_validator("agent_jwt_token")
    @classmethod
    def _jwt_shape(cls, value: SecretStr) -> SecretStr:
        if not _JWT_SHAPE.fullmatch(value.get_secret_value().strip()):
            raise ValueError("must be a JWT (header.payload.signature)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str) -> str:
        if not _AGENT_ID.fullmatch(value):
            raise ValueError("must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("livekit_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("must start with ws://, wss://, http:// or https://")
        return value.rstrip("/")

    @field_validator("shared_secret")
    @classmethod
    def _resolve_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr:
        if value is not None and value.get_secret_value():
            return value
        env = info.data.get("loqua_env", "dev")
        fallback = info.data.get(f"{env}_agent_secret")
        if fallback is not None and fallback.get_secret_value():
            return fallback
        raise ValueError(f"is not set (nor {ENV_SECRETS.get(env, 'DEV_AGENT_SECRET')} for LOQUA_ENV={env})")

    @field_validator("shared_secret_pad_byte")
    @classmethod
    def _pad_byte(cls, value: str) -> str:
        parse_pad_byte(value)
        return value

    @field_validator("agent_name")
    @classmethod
    def _agent_name(cls, value: str) -> str:
        value = value.strip()
        if value and (len(value) > 63 or not _DNS_LABEL.fullmatch(value)):
            raise ValueError("must be empty (automatic dispatch) or a DNS label (lowercase, digits, '-')")
        return value

    @field_validator("stt_provider", "llm_provider", "tts_provider", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("stt_provider")
    @classmethod
    def _stt(cls, value: str) -> str:
        return _one_of(value, STT_PROVIDERS)

    @field_validator("llm_provider")
    @classmethod
    def _llm(cls, value: str) -> str:
        return _one_of(value, LLM_PROVIDERS)

    @field_validator("tts_provider")
    @classmethod
    def _tts(cls, value: str) -> str:
        return _one_of(value, TTS_PROVIDERS)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _voice_all_or_nothing(self) -> TutorSettings:
        given = [p for p in (self.stt_provider, self.llm_provider, self.tts_provider) if p]
        if given and len(given) != 3:
            missing = [
                name
                for name, p in (
                    ("STT_PROVIDER", self.stt_provider),
                    ("LLM_PROVIDER", self.llm_provider),
                    ("TTS_PROVIDER", self.tts_provider),
                )
                if not p
            ]
            raise ValueError(
                f"a voice pipeline needs STT, LLM and TTS providers: set {' and '.join(missing)} too "
                "(or leave STT_PROVIDER, LLM_PROVIDER and TTS_PROVIDER empty for text-free mode)"
            )
        return self

    # ---- derived -----------------------------------------------------------------------------
    @property
    def max_sessions(self) -> int:
        return self.max_concurrent_sessions or TIERS[self.tier].sessions

    @property
    def pad_byte(self) -> int:
        return parse_pad_byte(self.shared_secret_pad_byte)

    @property
    def secret(self) -> str:
        """The resolved shared secret (SHARED_SECRET or the LOQUA_ENV-specific one)."""
        assert self.shared_secret is not None  # the validator guarantees it
        return self.shared_secret.get_secret_value()

    @property
    def voice_enabled(self) -> bool:
        return bool(self.stt_provider and self.llm_provider and self.tts_provider)

    @property
    def idle_processes(self) -> int:
        # Warm processes make a job start fast but each costs memory; a couple is enough because
        # the pool refills as jobs start.
        if self.num_idle_processes is not None:
            return self.num_idle_processes
        return min(2, self.max_sessions)

    def secret_values(self) -> list[str]:
        """Every secret this worker holds, for log redaction."""
        values = [self.agent_jwt_token, self.livekit_api_key, self.livekit_api_secret, self.shared_secret]
        values += [self.dev_agent_secret, self.staging_agent_secret, self.prod_agent_secret]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


# Environment variables whose values are secret: never echoed, even in settings errors.
SECRET_ENV_VARS = (
    "AGENT_JWT_TOKEN",
    "SHARED_SECRET",
    "DEV_AGENT_SECRET",
    "STAGING_AGENT_SECRET",
    "PROD_AGENT_SECRET",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
)


def _one_of(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(a for a in allowed if a)} or empty, got {value!r}")
    return value
