"""Settings: errors name the environment variable and never echo a secret; the CLI front door."""

from __future__ import annotations

import pytest

from loqua_common.settings import SettingsError, load_settings
from loqua_tutor import cli
from loqua_tutor.settings import Tier, TutorSettings

AGENT_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0dXRvciJ9.c2lnbmF0dXJlLXZhbHVl"
BASE_ENV = {
    "AGENT_JWT_TOKEN": AGENT_JWT,
    "AGENT_ID": "loqua-spanish-tutor",
    "API_BASE_URL": "http://127.0.0.1:8000/",
    "SHARED_SECRET": "super-shared-secret-value",
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey-value",
    "LIVEKIT_API_SECRET": "livekit-secret-value",
}
ALL_VARS = [
    *BASE_ENV,
    "DEV_AGENT_SECRET",
    "STAGING_AGENT_SECRET",
    "PROD_AGENT_SECRET",
    "LOQUA_ENV",
    "TIER",
    "MAX_CONCURRENT_SESSIONS",
    "AGENT_NAME",
    "SHARED_SECRET_PAD_BYTE",
    "STT_PROVIDER",
    "LLM_PROVIDER",
    "TTS_PROVIDER",
    "METRICS_PORT",
    "JOB_EXECUTOR",
    "LIVEKIT_AGENT_NAME",
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def problems(**overrides: object) -> dict[str, str]:
    with pytest.raises(SettingsError) as info:
        load_settings(TutorSettings, **overrides)
    return info.value.problems


def test_defaults(env: pytest.MonkeyPatch) -> None:
    s = load_settings(TutorSettings)
    assert s.api_base_url == "http://127.0.0.1:8000" and s.agent_name == ""
    assert s.tier is Tier.BASIC_CONVERSATION and s.max_sessions == 10
    assert (s.participant_wait_timeout_seconds, s.progress_interval_seconds, s.drain_timeout_seconds) == (
        45,
        30,
        600,
    )
    assert (s.metrics_port, s.health_port, s.log_rate_limit, s.pad_byte) == (9101, 8081, 400, 0)
    assert not s.voice_enabled and s.job_executor == "process"


@pytest.mark.parametrize(
    ("tier", "sessions"), [("basic-conversation", 10), ("ai-processing", 5), ("specialized-tutor", 3)]
)
def test_tier_sets_the_cap(env: pytest.MonkeyPatch, tier: str, sessions: int) -> None:
    env.setenv("TIER", tier)
    assert load_settings(TutorSettings).max_sessions == sessions
    env.setenv("MAX_CONCURRENT_SESSIONS", "2")
    assert load_settings(TutorSettings).max_sessions == 2


def test_missing_settings_are_named(env: pytest.MonkeyPatch) -> None:
    for name in ("AGENT_ID", "LIVEKIT_URL", "AGENT_JWT_TOKEN"):
        env.delenv(name)
    assert {"AGENT_ID", "LIVEKIT_URL", "AGENT_JWT_TOKEN"} <= set(problems())


def test_secret_selected_by_loqua_env(env: pytest.MonkeyPatch) -> None:
    env.delenv("SHARED_SECRET")
    env.setenv("LOQUA_ENV", "staging")
    env.setenv("DEV_AGENT_SECRET", "dev-secret-value")
    assert "SHARED_SECRET" in problems()
    assert "STAGING_AGENT_SECRET" in problems()["SHARED_SECRET"]
    env.setenv("STAGING_AGENT_SECRET", "staging-secret-value")
    assert load_settings(TutorSettings).secret == "staging-secret-value"
    env.setenv("SHARED_SECRET", "explicit-value")
    assert load_settings(TutorSettings).secret == "explicit-value"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TIER", "premium"),
        ("AGENT_NAME", "Not_A_Label"),
        ("API_BASE_URL", "ftp://x"),
        ("LIVEKIT_URL", "localhost:7880"),
        ("SHARED_SECRET_PAD_BYTE", "0x100"),
        ("MAX_CONCURRENT_SESSIONS", "0"),
        ("STT_PROVIDER", "whisper-local"),
        ("METRICS_PORT", "99999"),
        ("JOB_EXECUTOR", "fiber"),
        ("AGENT_ID", "bad id\nwith newline"),
    ],
)
def test_invalid_values_name_their_variable(env: pytest.MonkeyPatch, var: str, value: str) -> None:
    env.setenv(var, value)
    assert var in problems()


def test_secrets_never_echoed(env: pytest.MonkeyPatch) -> None:
    env.setenv("AGENT_JWT_TOKEN", "not-a-jwt-but-a-secret-value")
    env.setenv("LIVEKIT_API_SECRET", "")
    env.setenv("SHARED_SECRET_PAD_BYTE", "0xZZ-secretish")
    env.setenv("TIER", "premium")
    with pytest.raises(SettingsError) as info:
        load_settings(TutorSettings)
    text = str(info.value)
    assert "AGENT_JWT_TOKEN" in text and "TIER" in text and "premium" in text  # ordinary values are shown
    for secret in ("not-a-jwt-but-a-secret-value", "0xZZ-secretish", *BASE_ENV.values()):
        if "SECRET" in secret.upper() or secret in (AGENT_JWT, "devkey-value"):
            assert secret not in text


def test_voice_needs_all_three_providers(env: pytest.MonkeyPatch) -> None:
    env.setenv("LLM_PROVIDER", "openai")
    with pytest.raises(SettingsError) as info:
        load_settings(TutorSettings)
    text = str(info.value)
    assert "STT_PROVIDER" in text and "TTS_PROVIDER" in text
    env.setenv("STT_PROVIDER", "Deepgram")
    env.setenv("TTS_PROVIDER", "openai")
    assert load_settings(TutorSettings).voice_enabled


def test_cli_help_and_check_settings(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0 and "DRAIN_TIMEOUT_SECONDS" in capsys.readouterr().out
    assert cli.main(["check-settings"]) == 0
    out = capsys.readouterr().out
    assert "settings ok" in out and "max_sessions=10" in out and "text-free" in out
    for secret in BASE_ENV.values():
        if secret not in (BASE_ENV["AGENT_ID"], BASE_ENV["LIVEKIT_URL"], BASE_ENV["API_BASE_URL"]):
            assert secret not in out


def test_cli_bad_settings_exit_2_without_secrets(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env.setenv("AGENT_JWT_TOKEN", "plain-secret-token-value")
    assert cli.main(["check-settings"]) == 2
    err = capsys.readouterr().err
    assert "AGENT_JWT_TOKEN" in err and "plain-secret-token-value" not in err


def test_cli_flags_override_environment(env: pytest.MonkeyPatch) -> None:
    args = cli._parser().parse_args(
        ["start", "--tier", "specialized-tutor", "--executor", "thread", "--agent-name", "tutor-x"]
    )
    settings = cli.load(cli._overrides(args))
    assert (settings.max_sessions, settings.job_executor, settings.agent_name) == (3, "thread", "tutor-x")
