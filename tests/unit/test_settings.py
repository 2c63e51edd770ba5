"""load_settings: errors name environment variables and never show secret values."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loqua_common.settings import SettingsError, load_settings

NAMES = (
    "LIVEKIT_URL",
    "LIVEKIT_API_SECRET",
    "AGENT_TTL_SECONDS",
    "LOG_FORMAT",
    "METRICS_PORT",
    "AUTH_TOKEN",
    "DB_PASSWORD",
    "REGION_NAME",
    "NAMES",
    "TUTOR_LOG_LEVEL",
    "TUTOR_MAX_SESSIONS",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    livekit_url: str
    livekit_api_secret: SecretStr = SecretStr("dev-secret")
    agent_ttl_seconds: int = Field(300, ge=0, le=86400)
    log_format: str = Field("text", pattern="^(text|json)$")
    metrics_port: int = Field(9100, ge=0, le=65535)
    auth_token: str = ""  # a plain str, but the name says TOKEN
    db_password: str = Field("", min_length=0, max_length=8)
    region: str = Field("local", validation_alias=AliasChoices("REGION_NAME", "region"))
    names: list[str] = Field(default_factory=list)

    @field_validator("livekit_url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @field_validator("auth_token")
    @classmethod
    def _token(cls, value: str) -> str:
        if value and len(value) < 32:
            raise ValueError(f"token {value} is too short")  # careless: puts the value in the message
        return value


class PrefixedSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUTOR_")

    log_level: str = Field("INFO", pattern="^(DEBUG|INFO)$")
    max_sessions: int = Field(4, gt=0)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def problems(cls: type[BaseSettings], **overrides: object) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load_settings(cls, **overrides)
    return info.value


def test_valid_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "ws://lk:7880")
    monkeypatch.setenv("REGION_NAME", "eu-1")
    settings = load_settings(Settings, agent_ttl_seconds=60)
    assert (settings.livekit_url, settings.region, settings.agent_ttl_seconds) == ("ws://lk:7880", "eu-1", 60)


def test_example_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_TTL_SECONDS", "99999")
    err = problems(Settings)
    assert str(err) == (
        "invalid settings: LIVEKIT_URL: field required (set it in the environment); "
        "AGENT_TTL_SECONDS: must be <= 86400 (got 99999)"
    )
    assert isinstance(err, RuntimeError)
    assert err.__cause__ is None and err.__suppress_context__  # no chained error repeating values


def test_every_problem_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "http://lk")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    monkeypatch.setenv("METRICS_PORT", "abc")
    err = problems(Settings, agent_ttl_seconds=-5)
    assert err.problems == {
        "LIVEKIT_URL": "must start with ws:// or wss:// (got http://lk)",
        "AGENT_TTL_SECONDS": "must be >= 0 (got -5)",
        "LOG_FORMAT": "must match ^(text|json)$ (got xml)",
        "METRICS_PORT": "must be an integer (got abc)",
    }


def test_secret_values_never_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "ws://lk")
    monkeypatch.setenv("AUTH_TOKEN", "tok-1234567")
    monkeypatch.setenv("DB_PASSWORD", "hunter2-is-long")
    err = problems(Settings)
    text = str(err)
    assert "tok-1234567" not in text and "hunter2-is-long" not in text
    assert err.problems == {
        "AUTH_TOKEN": "token *** is too short",
        "DB_PASSWORD": "must be at most 8 characters",
    }


def test_secretstr_field_hides_its_value() -> None:
    class WithSecret(BaseSettings):
        signing: SecretStr | None = Field(None, min_length=10)

    err = problems(WithSecret, signing="short-val")
    assert "short-val" not in str(err)
    assert "SIGNING: " in str(err)


def test_env_prefix_and_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUTOR_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("TUTOR_MAX_SESSIONS", "0")
    err = problems(PrefixedSettings)
    assert err.problems == {
        "TUTOR_LOG_LEVEL": "must match ^(DEBUG|INFO)$ (got LOUD)",
        "TUTOR_MAX_SESSIONS": "must be > 0 (got 0)",
    }


def test_unparseable_complex_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "ws://lk")
    monkeypatch.setenv("NAMES", "[not json")
    err = problems(Settings)
    assert list(err.problems) == ["NAMES"]
    assert "[not json" not in str(err)
    assert str(err).startswith("invalid settings: NAMES: could not be parsed")


def test_list_item_errors_point_at_the_item() -> None:
    class Ports(BaseSettings):
        ports: list[int] = Field(default_factory=list)

    err = problems(Ports, ports=[80, "x"])
    assert err.problems == {"PORTS[1]": "must be an integer (got x)"}
