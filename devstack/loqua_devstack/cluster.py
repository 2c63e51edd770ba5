"""`make cluster`: the chart's pods on the local node, installed the way a user installs them.

The stack with its node (`loqua-dev up --node`), the image built from deploy/Dockerfile and loaded
into the node's containerd, namespace ``loqua-system`` labelled for the restricted Pod Security
Standard, the Secrets from ``.devstack/env``, then ``helm upgrade --install loqua`` with the
values file kept in the repository (helm/loqua-agents/examples/local-node.yaml).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loqua_devstack import binaries, image, monitoring, node
from loqua_devstack.stack import AGENT_PARTS, Stack

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "loqua-agents"
VALUES = CHART / "examples" / "local-node.yaml"
RELEASE = "loqua"
NAMESPACE = "loqua-system"
AGENT_NAME = "spanish-tutor"
LIVEKIT_SECRET = "loqua-livekit"
AGENT_SECRET = "loqua-agent"

TRY_HINT = """
The chart runs on the local node ({node}). Try:
  export KUBECONFIG={kubeconfig}
  kubectl get nodes -o wide; kubectl -n {ns} get pods -o wide
  kubectl apply -f deploy/examples/agentdispatch.yaml     # an AgentDispatch in namespace default
  kubectl get ad lesson-4711 -w
  .venv/bin/loqua-dev learner lesson-4711 --seconds 30     # a learner joins the example's room
  kubectl -n {ns} logs -l app.kubernetes.io/component=operator -f
Stop all of it with: make cluster-down
"""


def _say(msg: str) -> None:
    print(f"[loqua-dev cluster] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Installed:
    image: str
    release: str
    namespace: str
    seconds: float


def helm(stack: Stack, *args: str, timeout: float = 600) -> str:
    import subprocess

    cmd = [str(binaries.path_of("helm")), f"--kubeconfig={stack.kubeconfig}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"`helm {' '.join(args[:3])} ...` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def ensure_namespace(stack: Stack, name: str = NAMESPACE) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "pod-security.kubernetes.io/warn": "restricted",
            },
        },
    }
    _apply(stack, manifest)


def _apply(stack: Stack, manifest: dict) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(manifest, f)
    try:
        stack.kubectl("apply", "-f", f.name)
    finally:
        Path(f.name).unlink(missing_ok=True)


def ensure_secrets(stack: Stack, env: dict[str, str], namespace: str = NAMESPACE) -> None:
    """The two Secrets the chart references, made from the stack's settings (never printed)."""
    for name, data in (
        (LIVEKIT_SECRET, {"api-key": env["LIVEKIT_API_KEY"], "api-secret": env["LIVEKIT_API_SECRET"]}),
        (AGENT_SECRET, {"agent-jwt-token": env["AGENT_JWT_TOKEN"], "shared-secret": env["SHARED_SECRET"]}),
    ):
        _apply(
            stack,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "type": "Opaque",
                "stringData": data,
            },
        )


def values_args(image_name: str, env: dict[str, str]) -> list[str]:
    """helm's value arguments of the release: the local-node values file, then the image and the
    stack's addresses."""
    repository, tag = image_name.rsplit(":", 1)
    return [
        "-f",
        str(VALUES),
        "--set",
        f"image.repository={repository}",
        # --set-string: a content-digest tag such as 12345678 or 1e340000 would reach the chart's
        # schema as a number (helm --set parses it) and fail `image.tag` (want string).
        "--set-string",
        f"image.tag={tag}",
        "--set",
        f"livekit.url={env['NODE_LIVEKIT_URL']}",
        "--set",
        f"loqua.apiBaseUrl={env['NODE_LOQUA_API_URL']}",
    ]


def install(stack: Stack, image_name: str, extra_args: tuple[str, ...] = ()) -> None:
    """helm upgrade --install of the chart with the repository's values file for the local node."""
    env = stack.env()
    ensure_namespace(stack)
    ensure_secrets(stack, env)
    _say(f"helm upgrade --install {RELEASE} (namespace {NAMESPACE}, values {VALUES.relative_to(ROOT)})")
    helm(
        stack,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        *values_args(image_name, env),
        *extra_args,
    )
    # livekit-server (on the machine) posts its webhooks to the operator's Service.
    svc = json.loads(
        stack.kubectl(
            "-n", NAMESPACE, "get", "service", "-l", "app.kubernetes.io/component=operator", "-o", "json"
        ).stdout
    )
    for item in svc["items"]:
        port = next(p["port"] for p in item["spec"]["ports"] if p["name"] == "webhook")
        stack.set_webhook_url(f"http://{item['spec']['clusterIP']}:{port}/webhooks/livekit")


def wait_ready(stack: Stack, timeout: float = 600) -> None:
    """Every Deployment of the release rolled out and its pods Ready (with progress)."""
    deployments = json.loads(
        stack.kubectl(
            "-n", NAMESPACE, "get", "deploy", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
        ).stdout
    )["items"]
    for dep in deployments:
        name = dep["metadata"]["name"]
        started = time.monotonic()
        _say(f"waiting for deployment/{name}")
        result = stack.kubectl(
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            f"deploy/{name}",
            f"--timeout={int(timeout)}s",
            check=False,
            timeout=timeout + 30,
        )
        if result.returncode != 0:
            pods = stack.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False).stdout
            events = stack.kubectl("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
            raise RuntimeError(
                f"deployment/{name} did not become ready: {result.stderr.strip()}\n{pods}\n{events[-3000:]}"
            )
        _say(f"deployment/{name} ready in {time.monotonic() - started:.0f} s")


def up(stack: Stack, with_monitoring: bool = False) -> Installed:
    started = time.monotonic()
    stack.up(with_node=True)
    for part in AGENT_PARTS:  # `make up`'s operator and worker would compete with the pods
        if stack.status()[part]["running"]:
            _say(f"stopping the {part} process of `make up`: the chart's pods take over")
            stack.stop_part(part)
    built = image.build(stack.log_file("image"))
    stack.load_image(built.name)
    if with_monitoring:
        enable_monitoring(stack, built.name)
    else:
        install(stack, built.name)
        wait_ready(stack)
    return Installed(built.name, RELEASE, NAMESPACE, time.monotonic() - started)


def enable_monitoring(stack: Stack, image_name: str) -> None:
    """The release with its ServiceMonitor and PrometheusRule, and Prometheus, Alertmanager and
    the pager configured from them (see loqua_devstack.monitoring)."""
    monitoring.ensure_crds(stack)
    install(stack, image_name, monitoring.helm_args())
    wait_ready(stack)
    monitoring.up(stack)


def describe(stack: Stack) -> str:
    pods = stack.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide").stdout
    nodes = stack.kubectl("get", "nodes", "-o", "wide").stdout
    env = stack.env()
    lines = [
        nodes.rstrip(),
        "",
        pods.rstrip(),
        "",
        f"node network: bridge {stack.load()['node']['bridge']} {env['NODE_SUBNET']} (node {env['NODE_ADDRESS']})",
        f"pods reach livekit-server at {env['NODE_LIVEKIT_URL']} and the Loqua API at {env['NODE_LOQUA_API_URL']}",
        f"livekit-server webhooks -> {stack.load()['webhook_url']}",
        TRY_HINT.format(node=node.NODE_NAME, kubeconfig=stack.kubeconfig, ns=NAMESPACE),
    ]
    return "\n".join(lines)
