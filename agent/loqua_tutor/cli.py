"""`loqua-tutor`: run the tutor worker, or check its settings.

The worker is started programmatically (``run_worker``), not through livekit-agents' own CLI, so
this command owns its flags and reads everything else from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from loqua_common.settings import SettingsError, load_settings
from loqua_tutor import __version__, tiers
from loqua_tutor.settings import SECRET_ENV_VARS, TutorSettings
from loqua_tutor.tiers import TIERS, Tier

DESCRIPTION = f"""\
The Loqua tutor worker (livekit-agents): joins a room when dispatched, waits for the learner,
exchanges its agent JWT for the learner's encrypted JWT and runs the session against the Loqua API
(context, health, progress every 30 s, a learning-session record at the end).

Settings come from the environment (flags of `start` override a few):
  AGENT_JWT_TOKEN, AGENT_ID, API_BASE_URL                          (required)
  SHARED_SECRET, or DEV_/STAGING_/PROD_AGENT_SECRET by LOQUA_ENV (dev)  (required)
  SHARED_SECRET_PAD_BYTE (0x00)   LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET (required)
  AGENT_NAME ("" = automatic dispatch)   TIER ({tiers.names()})
  MAX_CONCURRENT_SESSIONS (from TIER: {tiers.sessions_by_tier()})   JOB_EXECUTOR (process|thread)
  PARTICIPANT_WAIT_TIMEOUT_SECONDS (45)   PROGRESS_INTERVAL_SECONDS (30)
  DRAIN_TIMEOUT_SECONDS (600)   FINALIZE_TIMEOUT_SECONDS (30)
  API_TIMEOUT_SECONDS (10)   API_MAX_RETRIES (3)   BREAKER_FAILURE_THRESHOLD (5)   BREAKER_RESET_SECONDS (30)
  METRICS_PORT (9101)   HEALTH_PORT (8081)   LOG_FORMAT (text|json)   LOG_LEVEL (INFO)
  LOG_RATE_LIMIT (400)   REGION (local)   STT_PROVIDER, LLM_PROVIDER, TTS_PROVIDER ("" = text-free)
See docs/tutor.md for the full table.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loqua-tutor", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"loqua-tutor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = sub.add_parser("start", help="run the worker until SIGTERM (drains first)")
    start.add_argument("--agent-name", metavar="NAME", help="explicit-dispatch agent name (AGENT_NAME)")
    start.add_argument("--tier", choices=[t.value for t in Tier], help="capacity tier (TIER)")
    start.add_argument("--max-sessions", type=int, metavar="N", help="concurrent sessions (MAX_CONCURRENT_SESSIONS)")
    start.add_argument("--executor", choices=["process", "thread"], help="job executor (JOB_EXECUTOR)")
    start.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus port (METRICS_PORT)")
    start.add_argument("--health-port", type=int, metavar="PORT", help="worker health port (HEALTH_PORT)")
    start.add_argument("--drain-timeout", type=int, metavar="S", help="drain timeout (DRAIN_TIMEOUT_SECONDS)")
    start.add_argument("--log-format", choices=["text", "json"], help="LOG_FORMAT")
    start.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="LOG_LEVEL")
    sub.add_parser("check-settings", help="validate the settings from the environment and exit")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {
        "agent_name": "agent_name",
        "tier": "tier",
        "max_sessions": "max_concurrent_sessions",
        "executor": "job_executor",
        "metrics_port": "metrics_port",
        "health_port": "health_port",
        "drain_timeout": "drain_timeout_seconds",
        "log_format": "log_format",
        "log_level": "log_level",
    }
    return {field: getattr(args, arg) for arg, field in mapping.items() if getattr(args, arg, None) is not None}


def _scrub(message: str) -> str:
    """Belt and braces: no secret value from the environment in an error message."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            message = message.replace(value, "***")
    return message


def load(overrides: dict[str, Any] | None = None) -> TutorSettings:
    return load_settings(TutorSettings, **(overrides or {}))


def setup_logging(settings: TutorSettings) -> None:
    from loqua_common.logging import configure_logging, register_secret

    configure_logging(
        component="tutor",
        agent_id=settings.agent_id,
        fmt=settings.log_format,
        rate_limit=settings.log_rate_limit,
        level=settings.log_level,
    )
    for value in settings.secret_values():
        register_secret(value)
    # httpx logs every request at INFO; the client logs what matters (failures, retries) itself.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load(_overrides(args))
    except SettingsError as exc:
        print(f"loqua-tutor: {_scrub(str(exc))}", file=sys.stderr)
        return 2
    if args.command == "check-settings":
        print(
            f"settings ok: agent_id={settings.agent_id} "
            f"agent_name={settings.agent_name or '(automatic dispatch)'} "
            f"tier={settings.tier.value} max_sessions={settings.max_sessions} "
            f"(tier default {TIERS[settings.tier].sessions}) executor={settings.job_executor} "
            f"api={settings.api_base_url} livekit={settings.livekit_url} "
            f"voice={'on' if settings.voice_enabled else 'off (text-free mode)'}"
        )
        return 0

    from loqua_tutor.pipeline import PipelineError
    from loqua_tutor.worker import run_worker

    setup_logging(settings)
    try:
        return asyncio.run(run_worker(settings))
    except PipelineError as exc:
        print(f"loqua-tutor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
