"""`loqua-dev`: build, start and stop the local stack of real components."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import uuid

import httpx

from loqua_devstack import binaries, debian, webpage
from loqua_devstack.stack import ALL_PARTS, Stack, devstack_dir, quiet_dev_secret_warning

DESCRIPTION = """\
Local stack of real components for the Loqua agents: etcd + kube-apiserver (+ kube-controller-manager),
livekit-server (--dev) and the reference Loqua API, all on 127.0.0.1. Binaries are built from Go modules
once and cached under $LOQUA_CACHE_DIR (default ~/.cache/loqua-agents). State, logs and the env file
live in .devstack/ (or $LOQUA_DEVSTACK_DIR). `up --node` adds a real node (containerd, kubelet,
kube-scheduler, kube-proxy on a bridge of its own); `cluster` installs the chart on it; `down` removes all.
"""


EXPLORE_HINT = """
The operator and a tutor worker (agent name spanish-tutor) are running. Try:
  set -a; . {env}; set +a
  kubectl apply -f deploy/examples/agentdispatch.yaml && kubectl get ad -w
  .venv/bin/loqua-dev learner lesson-4711 --seconds 30    # a learner joins the example's room
  .venv/bin/loqua-dev web                                 # or open the learner page in a browser
  tail -f {logs}/operator.log {logs}/tutor.log
Stop everything with: make down   (or: .venv/bin/loqua-dev down)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loqua-dev", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser(
        "build",
        help="build (or reuse) the pinned Go binaries; install the Debian packages the tests need (apt-get)",
    )
    b.add_argument("names", nargs="*", metavar="NAME", help=f"only these ({', '.join(binaries.BINARIES)})")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    up = sub.add_parser("up", help="start every part (reuses a running stack) and write .devstack/env")
    up.add_argument(
        "--with-agents",
        action="store_true",
        help="also install the CRD and run the operator and a tutor worker (agent name spanish-tutor)",
    )
    up.add_argument(
        "--node",
        action="store_true",
        help="also run a local node (containerd, kubelet, kube-scheduler, kube-proxy on a bridge of its own) "
        "that runs pods; livekit-server, the Loqua API and the API server gain the bridge's address",
    )
    img = sub.add_parser(
        "image",
        help="build deploy/Dockerfile with buildah on a base made from Debian's packages (cached layers)",
        description="Build the project's image from deploy/Dockerfile with buildah (no Docker, no registry): the "
        "base PYTHON_IMAGE is a stand-in made once from Debian's packages. Prints the image name and size; with "
        "--load (and a stack started with --node) the node's containerd gets it too.",
    )
    img.add_argument("--load", action="store_true", help="import the image into the local node's containerd")
    img.add_argument("--extras", default="", help="EXTRAS build argument, e.g. voice")
    cl = sub.add_parser(
        "cluster",
        help="the stack with its node, the image, and the chart installed as release loqua in loqua-system",
        description="`make cluster`: `up --node`, `image --load`, namespace loqua-system (restricted Pod Security), "
        "Secrets from .devstack/env, `helm upgrade --install loqua` with helm/loqua-agents/examples/"
        "local-node.yaml; waits for the pods and prints what runs where. Stop it with `loqua-dev down`.",
    )
    cl.add_argument(
        "--monitoring",
        action="store_true",
        help="also Prometheus, Alertmanager and the pager, configured from the chart's own ServiceMonitor and "
        "PrometheusRule (first time: builds prometheus and alertmanager from Go modules, ~10 min); "
        "PROMETHEUS_URL, ALERTMANAGER_URL and PAGER_URL in .devstack/env",
    )
    pg = sub.add_parser(
        "pages",
        help="the notifications the pager received from Alertmanager (alert, firing/resolved, labels, time)",
    )
    pg.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_parser("down", help="stop every process of the stack (and remove the node, if any)")
    st = sub.add_parser("status", help="tell what is up, where")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    e = sub.add_parser("env", help="print the connection settings (KEY=VALUE)")
    e.add_argument("--export", action="store_true", help="prefix lines with `export ` for eval")
    for name, verb in (
        ("stop", "stop one part (same address when started again)"),
        ("start", "start one part"),
    ):
        p = sub.add_parser(name, help=verb)
        p.add_argument("part", choices=ALL_PARTS)
    learner = sub.add_parser(
        "learner",
        help="join a room as a scripted learner (a new Loqua user) and report the agent",
        description="Join ROOM as a new learner of the reference Loqua API (the rtc SDK, with the web app's "
        "attributes), report the agent that joins and its session, stay, then leave. Needs `loqua-dev up`; "
        "with `make up` apply an AgentDispatch for ROOM first (agentName spanish-tutor).",
    )
    learner.add_argument("room", metavar="ROOM")
    learner.add_argument("--seconds", type=float, default=None, help="stay this long (default: until Ctrl+C)")
    learner.add_argument("--name", default="Ana", help="display name of the learner (default: Ana)")
    web = sub.add_parser(
        "web",
        help="print a signed-in link to the learner page (a new Loqua user unless --user)",
        description="The learner page (web/, livekit-client) is served by the stack's Loqua API under /learn/. "
        "This creates a learner (or takes --user), asks the API for their sign-in token and prints the page's "
        "address with it. The page joins ROOM through POST /api/v1/rooms/join, which ensures the room's "
        "AgentDispatch; with `make up` a tutor (agent name spanish-tutor) joins within seconds.",
    )
    web.add_argument("--room", default=None, help="room to join (default: lesson-<random>)")
    web.add_argument("--agent", default="spanish-tutor", help="agent name (default: spanish-tutor)")
    web.add_argument("--user", default=None, help="an existing Loqua user id (default: create one)")
    web.add_argument("--name", default="Ana", help="display name of a new learner (default: Ana)")
    api = sub.add_parser("api", help="run the reference Loqua API alone (see `loqua-dev api --help`)", add_help=False)
    api.add_argument("api_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["api"]:
        from loqua_devstack.loqua_api.__main__ import main as api_main

        return api_main(argv[1:])
    args = _parser().parse_args(argv)
    stack = Stack(devstack_dir())
    try:
        if args.command == "build":
            unknown = sorted(set(args.names) - set(binaries.BINARIES))
            if unknown:
                raise ValueError(f"unknown binaries {unknown}; choose from {', '.join(binaries.BINARIES)}")
            paths = binaries.ensure_all(args.names or None, force=args.force)
            for name, path in paths.items():
                print(f"{name}: {path}")
            if not args.names:
                debian.ensure(log_dir=binaries.cache_dir() / "build-logs")
                for group, (what, packages) in debian.GROUPS.items():
                    print(f"debian {group}: {' '.join(packages)} ({what})")
                print(f"learner page: {webpage.ensure_built()}")
        elif args.command == "up":
            stack.up(with_agents=args.with_agents, with_node=args.node)
            _print_status(stack)
            print(f"\nsettings: {stack.env_file}  (set -a; . {stack.env_file}; set +a)")
            print(f"learner page: {stack.env()['LOQUA_WEB_URL']}  (a signed-in link: .venv/bin/loqua-dev web)")
            if args.with_agents:
                print(EXPLORE_HINT.format(env=stack.env_file, logs=stack.root / "logs"))
        elif args.command == "image":
            from loqua_devstack import image

            built = image.build(stack.log_file("image"), extras=args.extras)
            archive = image.oci_archive(built.name)
            print(f"image: {built.name}")
            print(f"size: {built.size} uncompressed, {archive.stat().st_size / 2**20:.0f} MiB as an OCI archive")
            print(f"built in {built.seconds:.0f} s (unchanged layers reused)")
            if args.load:
                stack.load_image(built.name)
                print("loaded into the node's containerd")
        elif args.command == "cluster":
            from loqua_devstack import cluster

            installed = cluster.up(stack, with_monitoring=args.monitoring)
            print(cluster.describe(stack))
            print(
                f"make cluster: {installed.image} installed as release {installed.release} in {installed.seconds:.0f} s"
            )
        elif args.command == "pages":
            from loqua_devstack import monitoring, pager

            pages = pager.read_pages(monitoring.pager_record(stack.root))
            if args.json:
                for page in pages:
                    print(json.dumps(page, sort_keys=True))
            else:
                print(pager.format_pages(pages))
        elif args.command == "down":
            stack.down()
            print("stack stopped")
        elif args.command == "status":
            status = stack.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(stack)
            return 0 if stack.is_up() else 3
        elif args.command == "env":
            if not stack.env_file.exists():
                print("no .devstack/env yet: run `loqua-dev up`", file=sys.stderr)
                return 3
            for key, value in stack.env().items():
                print(f"{'export ' if args.export else ''}{key}={shlex.quote(value) if args.export else value}")
        elif args.command == "learner":
            if not stack.is_up():
                raise RuntimeError("the stack is not up: run `make up` (or `loqua-dev up`) first")
            from loqua_devstack.learner import exit_past_rtc_teardown, visit

            quiet_dev_secret_warning()

            try:
                code = 0 if asyncio.run(visit(stack.env(), args.room, args.seconds, args.name)) else 4
            except KeyboardInterrupt:
                code = 0
            exit_past_rtc_teardown(code)
        elif args.command == "web":
            if not stack.is_up():
                raise RuntimeError("the stack is not up: run `make up` (or `loqua-dev up`) first")
            from loqua_devstack.learner import create_user, page_url, sign_in_token

            env = stack.env()
            user_id = args.user or create_user(env, args.name)["user_id"]
            room = args.room or f"lesson-{uuid.uuid4().hex[:8]}"
            print(f"learner {user_id}, room {room}, agent {args.agent}; open (signed in):")
            print(page_url(env, sign_in_token(env, user_id), room, args.agent))
        elif args.command == "stop":
            stack.stop_part(args.part)
            print(f"{args.part} stopped")
        elif args.command == "start":
            stack.start_part(args.part)
            print(f"{args.part} started")
    except (
        binaries.BuildError,
        debian.DebianError,
        RuntimeError,
        ValueError,
        httpx.HTTPError,
        subprocess.SubprocessError,
    ) as exc:
        print(f"loqua-dev {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(stack: Stack) -> None:
    for part, info in stack.status().items():
        state = "up  " if info["running"] else "down"
        print(f"  {part:<24} {state} {info['address']:<28} pid={info['pid'] or '-'}")


if __name__ == "__main__":
    sys.exit(main())
