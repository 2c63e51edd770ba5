"""``python -m loqua_devstack.loqua_api`` (also ``loqua-dev api``): run the reference Loqua API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from loqua_devstack.loqua_api.app import create_app
from loqua_devstack.loqua_api.config import ConfigError, load_config
from loqua_devstack.stack import quiet_dev_secret_warning

EPILOG = """\
environment:
  LOQUA_JWT_SECRET         HS256 key signing agent and user JWTs (required)
  LOQUA_ADMIN_TOKEN        bearer token of the /admin endpoints (required)
  SHARED_SECRET            secret encrypting user tokens for the agent (required, unless the secret
                           of LOQUA_ENV is set: DEV_AGENT_SECRET, STAGING_AGENT_SECRET, PROD_AGENT_SECRET)
  LOQUA_ENV                dev | staging | prod (default dev); picks the secret above
  SHARED_SECRET_PAD_BYTE   byte padding a secret shorter than 32 bytes into the AES key:
                           0x.. hex or one ASCII character (default 0x00)
  USER_TOKEN_TTL_SECONDS   lifetime of issued user tokens, = expires_in (default 3600)

  The learner routes (/api/v1/rooms/...) need, else they answer 503 ROOMS_NOT_CONFIGURED:
  LIVEKIT_URL              the LiveKit URL handed to learners (ws:// or wss://)
  LIVEKIT_API_KEY, LIVEKIT_API_SECRET   sign the learners' LiveKit tokens
  KUBECONFIG               the API's own least-privilege credentials (default: in-cluster ServiceAccount)
  DISPATCH_NAMESPACE       namespace of the AgentDispatch objects (default "default")
  JOIN_DISPATCH_WAIT_SECONDS   how long a join waits for the operator to bind the dispatch (default 10)
  DISPATCH_TTL_SECONDS     spec.ttlSeconds of created objects (default: unset, the operator's AGENT_TTL_SECONDS)
  LIVEKIT_TOKEN_TTL_SECONDS    lifetime of learner LiveKit tokens (default 21600)

Endpoints: POST /api/v1/agent/user-token (agent JWT); POST /api/v1/agent/progress,
POST /api/v1/agent/sessions, GET /api/v1/agent/user/{user_id}/context, POST /api/v1/agent/health,
POST /api/v1/rooms/join, GET /api/v1/rooms/{room}/agent (user JWT); /admin/users,
/admin/users/{id}/token, /admin/users/{id}/records, /admin/faults (admin token); GET /healthz;
the learner page under /learn/ with --web-root.
See docs/loqua-api.md.
"""


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("port must be in 0..65535")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loqua-dev api" if Path(sys.argv[0]).name == "loqua-dev" else "python -m loqua_devstack.loqua_api",
        description="Reference Loqua API: the agent endpoints of seed 003 and the learner's /rooms routes "
        "over SQLite, for the local stack.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        action="append",
        help="address to bind; repeat for several (default 127.0.0.1 only)",
    )
    parser.add_argument("--port", type=_port, default=8088, help="TCP port (default 8088)")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (created when missing)")
    parser.add_argument("--web-root", type=Path, default=None, help="built learner page to serve under /learn/")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(os.environ, args.db)
    except ConfigError as err:
        print(f"loqua-api: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    quiet_dev_secret_warning()  # livekit --dev's 6-byte secret signs learner tokens here
    log = logging.getLogger("loqua_api")
    hosts = args.host or ["127.0.0.1"]
    log.info("listening on %s (db %s)", ", ".join(f"http://{h}:{args.port}" for h in hosts), args.db)
    if args.web_root is not None and not (args.web_root / "index.html").is_file():
        print(f"loqua-api: error: --web-root {args.web_root} has no index.html (loqua-dev build)", file=sys.stderr)
        return 2
    web.run_app(create_app(config, args.web_root), host=hosts, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
