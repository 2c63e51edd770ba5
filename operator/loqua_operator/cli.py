"""`loqua-operator`: run the AgentDispatch operator, or check its settings."""

from __future__ import annotations

import argparse
import asyncio
import sys

from loqua_common.settings import SettingsError, load_settings
from loqua_operator.settings import OperatorSettings

DESCRIPTION = """\
Reconciles AgentDispatch objects (agents.loqua.app/v1alpha1) against LiveKit agent dispatches:
one live dispatch per (room, agent name), reuse, duplicate removal, retries, finalizers.

Settings come from the environment:
  LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET   (required)
  AGENT_TTL_SECONDS (300)        CLEANUP_INTERVAL_MS (60000)    ORPHAN_GRACE_SECONDS (120)
  AGENT_PRESENCE_GRACE_SECONDS (15)                MANAGED_AGENT_NAMES (comma-separated)
  LOG_FORMAT (text|json)         LOG_LEVEL (INFO)               LOG_RATE_LIMIT (400 lines/s)
  METRICS_PORT (9100)            WEBHOOK_PORT (8090)            REGION (local)
  HTTP_HOST (0.0.0.0: address of the metrics/health and webhook servers; 127.0.0.1 outside a pod)
  LEADER_ELECTION (true)         LEASE_NAME, LEASE_NAMESPACE    POD_NAME, POD_NAMESPACE
  LIVEKIT_RETRY_ATTEMPTS (3)     LIVEKIT_RETRY_BASE_SECONDS (1) LIVEKIT_TIMEOUT_SECONDS (10)
  MAX_REDISPATCHES (10)          ORPHAN_ROOMS_PER_SWEEP (200)   WEBHOOK_ENABLED (true)
  LIVENESS_LOOP_STALL_SECONDS (10)                 LIVENESS_WATCH_STALL_SECONDS (150)
  CRD_WAIT_SECONDS (120: at start, wait for the AgentDispatch CRD to be served; then exit 2)
Leader election (LEADER_ELECTION=true): client-go timing, lease 15 s, renew deadline 10 s, retry 2 s;
a replica that could not renew within the deadline stops writing at once, turns not ready and exits 1.
Kubernetes credentials: in-cluster service account, else $KUBECONFIG.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loqua-operator", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the operator until SIGTERM")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    sub.add_parser("check-settings", help="validate the settings from the environment and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(OperatorSettings)
    except SettingsError as exc:
        print(f"loqua-operator: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-settings":
        print(
            f"settings ok: livekit={settings.livekit_url} region={settings.region} "
            f"ttl={settings.agent_ttl_seconds}s cleanup={settings.cleanup_interval_ms}ms"
        )
        return 0
    from loqua_operator import memory
    from loqua_operator.app import run, setup_logging

    memory.limit_arenas()  # before any thread starts
    setup_logging(settings)
    return asyncio.run(run(settings, args.namespace))


if __name__ == "__main__":
    sys.exit(main())
