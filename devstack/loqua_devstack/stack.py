"""The local stack: etcd, kube-apiserver, kube-controller-manager, livekit-server, Loqua API.

State lives in ``.devstack/`` (ports, secrets and pids in ``state.json``, one log per part,
``env`` for shells and tests). Ports are picked once and kept, so ``stop PART`` / ``start PART``
bring a part back at the same address, which is what fault tests need.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loqua_devstack import binaries, monitoring, node, processes, webpage
from loqua_devstack.pki import ControlPlanePki, ensure_pki

PARTS = ("etcd", "kube-apiserver", "kube-controller-manager", "livekit", "loqua-api")
# Started only by `loqua-dev up --with-agents` (`make up`): the product itself, for exploring by hand.
AGENT_PARTS = ("operator", "tutor")
# Started only by `loqua-dev up --node` (`make cluster`): a real node that runs the chart's pods.
NODE_PARTS = node.NODE_PARTS
MONITORING_PARTS = monitoring.MONITORING_PARTS
ALL_PARTS = PARTS + AGENT_PARTS + NODE_PARTS + MONITORING_PARTS
# Parts whose command line changes when the node is added (they gain an address on its bridge).
NODE_AWARE_PARTS = ("kube-apiserver", "kube-controller-manager", "livekit", "loqua-api")
# The TCP ports (keys of the state's "ports") each part listens on: a restart waits until they are free.
PART_PORTS = {
    "etcd": ("etcd", "etcd_peer"),
    "kube-apiserver": ("apiserver",),
    "kube-controller-manager": ("kcm",),
    "livekit": ("livekit", "livekit_rtc_tcp"),
    "loqua-api": ("loqua_api",),
    "operator": ("operator_metrics", "operator_webhook"),
    "tutor": ("tutor_metrics",),
}
EXPLORE_AGENT_NAME = "spanish-tutor"
DEFAULT_AGENT_ID = "loqua-dev-tutor"
# The reference API's own Kubernetes identity (the chart's optional web-backend RBAC, rendered from
# the chart itself): AgentDispatch objects of learners' rooms live in this namespace.
DISPATCH_NAMESPACE = "loqua-learners"
WEB_BACKEND_SA = "loqua-api"
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "loqua-agents"
CRD_DIR = ROOT / "deploy" / "crds"
LIVEKIT_API_KEY = "devkey"
LIVEKIT_API_SECRET = "secret"  # what `livekit-server --dev` uses; dev only, never in production


# Command line, extra environment and readiness probe of one part.
PartSpec = tuple[list[str], dict[str, str], Callable[[], bool]]


def quiet_dev_secret_warning() -> None:
    """PyJWT warns on every signing that LIVEKIT_API_SECRET (6 bytes) is short: true, and dev only."""
    warnings.filterwarnings("ignore", message="The HMAC key is")


def devstack_dir() -> Path:
    return Path(os.environ.get("LOQUA_DEVSTACK_DIR") or Path.cwd() / ".devstack").resolve()


def _say(msg: str) -> None:
    print(f"[loqua-dev] {msg}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    root: Path

    # ---- state -------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def web_backend_kubeconfig(self) -> Path:
        """The reference API's kubeconfig: a ServiceAccount token, not the admin certificate."""
        return self.root / "loqua-api.kubeconfig"

    def log_file(self, part: str) -> Path:
        return self.root / "logs" / f"{part}.log"

    def load(self) -> dict:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {}

    def save(self, state: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    def _init_state(self) -> dict:
        state = self.load()
        ports = state.setdefault("ports", {})
        for key in (
            "etcd",
            "etcd_peer",
            "apiserver",
            "kcm",
            "livekit",
            "livekit_rtc_tcp",
            "loqua_api",
            "operator_metrics",
            "tutor_metrics",
        ):
            ports.setdefault(key, processes.free_port())
        ports.setdefault("livekit_rtc_udp", processes.free_udp_port())
        # The operator's webhook port is reserved here so livekit-server can point at it up front.
        ports.setdefault("operator_webhook", processes.free_port())
        sec = state.setdefault("secrets", {})
        sec.setdefault("loqua_jwt_secret", secrets.token_urlsafe(32))
        sec.setdefault("shared_secret", secrets.token_urlsafe(24))
        sec.setdefault("admin_token", secrets.token_urlsafe(24))
        state.setdefault("pids", {})
        state.setdefault("webhook_url", f"http://127.0.0.1:{ports['operator_webhook']}/webhooks/livekit")
        self.save(state)
        return state

    # ---- parts -------------------------------------------------------------------------------
    def _pki(self) -> ControlPlanePki:
        return ensure_pki(self.root / "pki")

    def _apiserver_ssl(self) -> ssl.SSLContext:
        pki = self._pki()
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        return ctx

    def _part_specs(self, state: dict) -> dict[str, tuple[list[str], dict[str, str], Callable[[], bool]]]:
        """Command line, extra environment and readiness probe of each part."""
        p = state["ports"]
        pki = self._pki()
        nodecfg = self.node_config(state)
        # Addresses the servers that pods use listen on: loopback, plus the node's bridge.
        hosts = ["127.0.0.1", *([nodecfg["address"]] if nodecfg else [])]
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        specs: dict[str, tuple[list[str], dict[str, str], Callable[[], bool]]] = {}
        specs["etcd"] = (
            [
                str(binaries.path_of("etcd")),
                "--name=devstack",
                f"--data-dir={self.root / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-cluster=devstack=http://127.0.0.1:{p['etcd_peer']}",
                "--unsafe-no-fsync",  # test data only: fsync makes every write wait on the disk
                "--log-level=warn",
            ],
            {},
            lambda: processes.http_ok(f"http://127.0.0.1:{p['etcd']}/health"),
        )
        specs["kube-apiserver"] = (
            [
                str(binaries.path_of("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                f"--cert-dir={self.root / 'pki'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--secure-port={p['apiserver']}",
                "--bind-address=127.0.0.1",
                # With the node: the `kubernetes` Service's endpoint is the node's bridge address,
                # where a forwarder (part apiserver-bridge) passes connections to 127.0.0.1.
                f"--advertise-address={nodecfg['address'] if nodecfg else '127.0.0.1'}",
                f"--service-cluster-ip-range={node.SERVICE_CIDR}",
                *(
                    [
                        f"--kubelet-client-certificate={pki.admin_cert}",
                        f"--kubelet-client-key={pki.admin_key}",
                        # The node's bridge address, never a DNS lookup of its name.
                        "--kubelet-preferred-address-types=InternalIP",
                    ]
                    if nodecfg
                    else []
                ),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
            {},
            lambda: processes.http_ok(f"https://127.0.0.1:{p['apiserver']}/readyz", context=self._apiserver_ssl()),
        )
        specs["kube-controller-manager"] = (
            [
                str(binaries.path_of("kube-controller-manager")),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kcm']}",
                f"--cert-dir={self.root / 'kcm-certs'}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                # nodelifecycle with the node only: it lifts the not-ready taint a new node registers with.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route"
                + ("" if nodecfg else ",-nodelifecycle"),
                "--v=1",
            ],
            {},
            lambda: processes.http_ok(f"https://127.0.0.1:{p['kcm']}/healthz", context=insecure),
        )
        livekit_config = "\n".join(
            [
                f"port: {p['livekit']}",
                f"bind_addresses: {json.dumps(hosts)}",
                "rtc:",
                # No ICE over TCP: livekit-server would listen for it on every address of the machine.
                "  tcp_port: 0",
                f"  udp_port: {p['livekit_rtc_udp']}",
                "  use_external_ip: false",
                # Media (ICE) on one interface, never the machine's own NICs: loopback, or with the
                # node its bridge (reachable from the machine and the pods alike; livekit-server's
                # UDP mux answers on the wrong socket when given both).
                f"  enable_loopback_candidate: {'false' if nodecfg else 'true'}",
                "  interfaces:",
                f"    includes: {json.dumps([nodecfg['bridge']] if nodecfg else ['lo'])}",
                "keys:",
                f"  {LIVEKIT_API_KEY}: {LIVEKIT_API_SECRET}",
                "webhook:",
                f"  api_key: {LIVEKIT_API_KEY}",
                "  urls:",
                f"    - {state['webhook_url']}",
                "logging:",
                "  level: info",
            ]
        )
        specs["livekit"] = (
            [
                str(binaries.path_of("livekit-server")),
                "--dev",
                *[f"--bind={h}" for h in hosts],
                f"--node-ip={hosts[-1]}",
                f"--config-body={livekit_config}",
            ],
            {},
            lambda: processes.http_ok(f"http://127.0.0.1:{p['livekit']}/"),
        )
        sec = state["secrets"]
        api_cmd = [
            sys.executable,
            "-m",
            "loqua_devstack.loqua_api",
            *[f"--host={h}" for h in hosts],
            f"--port={p['loqua_api']}",
            f"--db={self.root / 'loqua-api.sqlite'}",
        ]
        if webpage.is_built():
            api_cmd.append(f"--web-root={webpage.built_dir()}")
        specs["loqua-api"] = (
            api_cmd,
            {
                "LOQUA_JWT_SECRET": sec["loqua_jwt_secret"],
                "SHARED_SECRET": sec["shared_secret"],
                "SHARED_SECRET_PAD_BYTE": "0x00",
                "LOQUA_ADMIN_TOKEN": sec["admin_token"],
                # The learner routes: LiveKit for tokens, its own least-privilege Kubernetes identity.
                "LIVEKIT_URL": f"ws://127.0.0.1:{p['livekit']}",
                "LIVEKIT_API_KEY": LIVEKIT_API_KEY,
                "LIVEKIT_API_SECRET": LIVEKIT_API_SECRET,
                "KUBECONFIG": str(self.web_backend_kubeconfig),
                "DISPATCH_NAMESPACE": DISPATCH_NAMESPACE,
            },
            lambda: processes.http_ok(f"http://127.0.0.1:{p['loqua_api']}/healthz"),
        )
        specs.update(self._agent_specs(state))
        if nodecfg:
            specs.update(self._node_specs(state, nodecfg))
        if monitoring.enabled(state):
            urls = monitoring.probes(state)
            for part, (cmd, env) in monitoring.part_specs(self.root, state).items():
                specs[part] = (cmd, env, lambda url=urls[part]: processes.http_ok(url))
        return specs

    # ---- the node ----------------------------------------------------------------------------
    @property
    def node_dir(self) -> Path:
        return self.root / "node"

    @staticmethod
    def node_config(state: dict) -> dict | None:
        """The node's settings when `up --node` added it to this stack (until `down`)."""
        cfg = state.get("node") or {}
        return cfg if cfg.get("enabled") else None

    def _node_specs(self, state: dict, nodecfg: dict) -> dict[str, PartSpec]:
        p, n = state["ports"], nodecfg["ports"]
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        sock = node.run_dir(nodecfg) / "containerd.sock"
        probes: dict[str, Callable[[], bool]] = {
            "containerd": lambda: sock.exists() and node.ctr(nodecfg, "version", check=False).returncode == 0,
            "kubelet": lambda: processes.http_ok(f"http://127.0.0.1:{n['kubelet_healthz']}/healthz"),
            "kube-scheduler": lambda: processes.http_ok(
                f"https://127.0.0.1:{n['scheduler']}/healthz", context=insecure
            ),
            "kube-proxy": lambda: processes.http_ok(f"http://127.0.0.1:{n['proxy_metrics']}/metrics"),
            "apiserver-bridge": lambda: processes.tcp_open(nodecfg["address"], p["apiserver"]),
        }
        specs = node.part_specs(self.node_dir, nodecfg, self.kubeconfig, p["apiserver"])
        return {part: (cmd, env, probes[part]) for part, (cmd, env) in specs.items()}

    def _agent_specs(self, state: dict) -> dict[str, tuple[list[str], dict[str, str], Callable[[], bool]]]:
        p = state["ports"]
        bin_dir = Path(sys.executable).parent
        common = {
            "KUBECONFIG": str(self.kubeconfig),
            "LIVEKIT_URL": f"ws://127.0.0.1:{p['livekit']}",
            "LIVEKIT_API_KEY": LIVEKIT_API_KEY,
            "LIVEKIT_API_SECRET": LIVEKIT_API_SECRET,
            "REGION": "devstack",
        }
        operator_env = {
            **common,
            "METRICS_PORT": str(p["operator_metrics"]),
            "WEBHOOK_PORT": str(p["operator_webhook"]),
            "LEASE_NAMESPACE": "default",
            "HTTP_HOST": "127.0.0.1",
            "CLEANUP_INTERVAL_MS": "5000",
        }
        sec = state["secrets"]
        tutor_env = {
            **common,
            "API_BASE_URL": f"http://127.0.0.1:{p['loqua_api']}",
            "AGENT_JWT_TOKEN": state.get("agent_jwt_token", ""),
            "AGENT_ID": DEFAULT_AGENT_ID,
            "SHARED_SECRET": sec["shared_secret"],
            "SHARED_SECRET_PAD_BYTE": "0x00",
            "AGENT_NAME": EXPLORE_AGENT_NAME,
            "METRICS_PORT": str(p["tutor_metrics"]),
            "HEALTH_PORT": "0",
            "HTTP_HOST": "127.0.0.1",
            "JOB_EXECUTOR": "thread",
        }

        def healthy(port: int) -> Callable[[], bool]:
            def check() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                        return resp.read().decode().strip() == "ok"
                except OSError:
                    return False

            return check

        return {
            "operator": ([str(bin_dir / "loqua-operator"), "run"], operator_env, healthy(p["operator_metrics"])),
            "tutor": ([str(bin_dir / "loqua-tutor"), "start"], tutor_env, healthy(p["tutor_metrics"])),
        }

    def _write_kubeconfig(self, state: dict) -> None:
        self._write_admin_kubeconfig(self.kubeconfig, f"https://127.0.0.1:{state['ports']['apiserver']}")

    def _write_admin_kubeconfig(self, path: Path, server: str) -> None:
        pki = self._pki()

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "devstack",
                            "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)},
                        }
                    ],
                    "users": [
                        {
                            "name": "admin",
                            "user": {
                                "client-certificate-data": b64(pki.admin_cert),
                                "client-key-data": b64(pki.admin_key),
                            },
                        }
                    ],
                    "contexts": [{"name": "devstack", "context": {"cluster": "devstack", "user": "admin"}}],
                    "current-context": "devstack",
                },
                indent=2,
            )
        )
        path.chmod(0o600)

    @contextlib.contextmanager
    def empty_apiserver(self, name: str, timeout: float = 90.0) -> Iterator[Path]:
        """A second kube-apiserver on the stack's etcd under a key prefix of its own: an empty
        cluster (no CRDs, no namespaces of other tests) for start-up tests. Yields its admin
        kubeconfig; stops it and deletes its keys from etcd afterwards."""
        state = self.load()
        cmd = [
            arg
            for arg in self._part_specs(state)["kube-apiserver"][0]
            if not arg.startswith(("--secure-port=", "--cert-dir="))
        ]
        port = processes.free_port()
        work = self.root / "isolated" / name
        work.mkdir(parents=True, exist_ok=True)
        prefix = f"/isolated/{name}"
        cmd += [f"--secure-port={port}", f"--etcd-prefix={prefix}", f"--cert-dir={work / 'certs'}"]
        log_file = self.root / "logs" / f"kube-apiserver-{name}.log"
        pid = processes.spawn(cmd, log_file)
        kubeconfig = work / "kubeconfig"
        try:
            url = f"https://127.0.0.1:{port}/readyz"
            processes.wait_until(
                lambda: processes.http_ok(url, context=self._apiserver_ssl()),
                f"kube-apiserver {name}",
                timeout,
                pid=pid,
                log_file=log_file,
            )
            self._write_admin_kubeconfig(kubeconfig, f"https://127.0.0.1:{port}")
            yield kubeconfig
        finally:
            processes.stop(pid)
            self._delete_etcd_prefix(state, prefix + "/")

    @staticmethod
    def _delete_etcd_prefix(state: dict, prefix: str) -> None:
        """Delete every key under ``prefix`` (etcd's v3 JSON gateway: range end = prefix + 1)."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        body = json.dumps({"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{state['ports']['etcd']}/v3/kv/deleterange", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def _provision_web_backend(self, state: dict) -> None:
        """The CRD, the learners' namespace, the chart's web-backend RBAC (rendered from the chart:
        one source of those rules) and a token for its ServiceAccount, in the API's own kubeconfig."""
        from loqua_devstack.services import kubectl

        admin = {"KUBECONFIG": str(self.kubeconfig)}
        kubectl(admin, "apply", "-f", str(CRD_DIR))
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DISPATCH_NAMESPACE}}
        kubectl(admin, "apply", "-f", "-", input_=json.dumps(namespace))
        helm_home = self.root / "helm-home"
        rendered = subprocess.run(
            [
                str(binaries.path_of("helm")),
                "template",
                "devstack",
                str(CHART),
                "--namespace",
                DISPATCH_NAMESPACE,
                "--kube-version",
                binaries.KUBERNETES_VERSION,
                "--show-only",
                "templates/web-backend-rbac.yaml",
                "--set",
                "webBackend.enabled=true",
                "--set",
                f"webBackend.serviceAccount.name={WEB_BACKEND_SA}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, HELM_CACHE_HOME=str(helm_home), HELM_CONFIG_HOME=str(helm_home)),
        )
        if rendered.returncode != 0:
            raise RuntimeError(f"helm template of the web-backend RBAC failed: {rendered.stderr.strip()}")
        kubectl(admin, "apply", "-f", "-", input_=rendered.stdout)
        token = kubectl(admin, "create", "token", WEB_BACKEND_SA, "-n", DISPATCH_NAMESPACE, "--duration=720h").strip()
        pki = self._pki()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "devstack",
                    "cluster": {
                        "server": f"https://127.0.0.1:{state['ports']['apiserver']}",
                        "certificate-authority-data": base64.b64encode(pki.ca_cert.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": WEB_BACKEND_SA, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "web-backend",
                    "context": {"cluster": "devstack", "user": WEB_BACKEND_SA, "namespace": DISPATCH_NAMESPACE},
                }
            ],
            "current-context": "web-backend",
        }
        path = self.web_backend_kubeconfig
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    def env(self, state: dict | None = None) -> dict[str, str]:
        """The connection settings written to ``.devstack/env``."""
        state = state or self.load()
        p, sec = state["ports"], state["secrets"]
        from loqua_devstack.loqua_api.tokens import mint_agent_token

        agent_token = state.get("agent_jwt_token")
        if not agent_token:
            agent_token = mint_agent_token(sec["loqua_jwt_secret"], DEFAULT_AGENT_ID, 30 * 24 * 3600)
            state["agent_jwt_token"] = agent_token
            self.save(state)
        loqua_url = f"http://127.0.0.1:{p['loqua_api']}"
        return {
            "DEVSTACK_DIR": str(self.root),
            "KUBECONFIG": str(self.kubeconfig),
            "KUBE_APISERVER_URL": f"https://127.0.0.1:{p['apiserver']}",
            "LIVEKIT_URL": f"ws://127.0.0.1:{p['livekit']}",
            "LIVEKIT_API_KEY": LIVEKIT_API_KEY,
            "LIVEKIT_API_SECRET": LIVEKIT_API_SECRET,
            "LOQUA_API_URL": loqua_url,
            "API_BASE_URL": loqua_url,
            "LOQUA_WEB_URL": f"{loqua_url}/learn/",
            "DISPATCH_NAMESPACE": DISPATCH_NAMESPACE,
            "LOQUA_ADMIN_TOKEN": sec["admin_token"],
            "LOQUA_JWT_SECRET": sec["loqua_jwt_secret"],
            "AGENT_JWT_TOKEN": agent_token,
            "AGENT_ID": DEFAULT_AGENT_ID,
            "SHARED_SECRET": sec["shared_secret"],
            "SHARED_SECRET_PAD_BYTE": "0x00",
            "WEBHOOK_PORT": str(p["operator_webhook"]),
            "LIVEKIT_WEBHOOK_URL": state["webhook_url"],
            "HELM_BIN": str(binaries.BINARIES["helm"].path),
            "PROMTOOL_BIN": str(binaries.BINARIES["promtool"].path),
            **self._node_env(state),
            **monitoring.env(state),
        }

    def _node_env(self, state: dict) -> dict[str, str]:
        """Where the pods of the node reach the stack: the node's bridge address."""
        nodecfg = self.node_config(state)
        if not nodecfg:
            return {}
        p, addr = state["ports"], nodecfg["address"]
        return {
            "NODE_NAME": node.NODE_NAME,
            "NODE_ADDRESS": addr,
            "NODE_SUBNET": nodecfg["subnet"],
            "NODE_LIVEKIT_URL": f"ws://{addr}:{p['livekit']}",
            "NODE_LOQUA_API_URL": f"http://{addr}:{p['loqua_api']}",
        }

    def write_env(self) -> None:
        self._write_env(self.load())

    def _write_env(self, state: dict) -> None:
        lines = [f"{k}={v}" for k, v in self.env(state).items()]
        self.env_file.write_text(
            "# written by `loqua-dev up`; source with: set -a; . .devstack/env; set +a\n" + "\n".join(lines) + "\n"
        )
        self.env_file.chmod(0o600)

    # ---- lifecycle ---------------------------------------------------------------------------
    def _available_parts(self) -> list[str]:
        """kube-controller-manager is optional: used when its binary is built."""
        parts = list(PARTS)
        if not binaries.BINARIES["kube-controller-manager"].path.exists():
            parts.remove("kube-controller-manager")
        return parts

    def start_part(self, part: str, state: dict | None = None, timeout: float = 90.0) -> None:
        if part not in ALL_PARTS:
            raise ValueError(f"unknown part {part!r}; parts are: {', '.join(ALL_PARTS)}")
        state = state or self.load()
        if not state:
            raise RuntimeError("the stack was never started here: run `loqua-dev up` first")
        specs = self._part_specs(state)
        if part not in specs:
            if part in MONITORING_PARTS:
                raise ValueError(f"{part} is part of the monitoring stack: start it with `make cluster MONITORING=1`")
            raise ValueError(f"{part} is a part of the local node: start it with `loqua-dev up --node`")
        cmd, extra_env, ready = specs[part]
        if self._running(state, part):
            if state.get("cmdlines", {}).get(part, cmd) == cmd:
                return
            _say(f"restarting {part}: its settings changed (the node's bridge address)")
            self.stop_part(part)
            state = self.load()
            self._wait_ports_released(part, state)
        if part == "loqua-api":
            self._provision_web_backend(state)
        log = self.log_file(part)
        env = dict(os.environ, **extra_env)
        started = time.monotonic()
        pid = processes.spawn(cmd, log, env=env, cwd=self.root)
        state["pids"][part] = pid
        state.setdefault("executables", {})[part] = cmd[0]
        state.setdefault("cmdlines", {})[part] = cmd
        self.save(state)
        processes.wait_until(ready, part, timeout, pid=pid, log_file=log)
        _say(f"{part} ready in {time.monotonic() - started:.1f} s (pid {pid}, log {log})")

    def _running(self, state: dict, part: str) -> bool:
        return processes.runs(state.get("pids", {}).get(part), state.get("executables", {}).get(part))

    def _wait_ports_released(self, part: str, state: dict, timeout: float = 15.0) -> None:
        """The stopped ``part``'s ports can be bound again: the new process binds the same ones."""
        ports = [state["ports"][key] for key in PART_PORTS.get(part, ()) if key in state.get("ports", {})]
        try:
            processes.wait_until(lambda: all(processes.port_is_free(port) for port in ports), part, timeout)
        except RuntimeError:
            busy = [port for port in ports if not processes.port_is_free(port)]
            raise RuntimeError(
                f"{part} was stopped for a restart, but port(s) {busy} on 127.0.0.1 are still in use after "
                f"{timeout:.0f} s; see which process holds them with `ss -ltnp`, stop it, and run the command again"
            ) from None

    def stop_part(self, part: str) -> None:
        state = self.load()
        pid = state.get("pids", {}).pop(part, None)
        processes.stop(pid, executable=state.get("executables", {}).get(part))
        if state:
            self.save(state)

    def up(self, with_agents: bool = False, with_node: bool = False) -> dict[str, str]:
        """Start every part that is not running (reusing a running stack) and write the env file;
        ``with_agents`` also installs the CRD and starts the operator and a tutor worker;
        ``with_node`` adds the local node (see loqua_devstack.node)."""
        binaries.ensure_all(
            [
                n
                for n in binaries.BINARIES
                if (with_node or n not in binaries.NODE_BINARIES) and n not in binaries.MONITORING_BINARIES
            ]
        )
        webpage.ensure_built()
        self.root.mkdir(parents=True, exist_ok=True)
        state = self._init_state()
        if with_node:
            state = self._prepare_node(state)
        self._pki()
        self._write_kubeconfig(state)
        started = time.monotonic()
        parts = self._available_parts()
        if with_node and "kube-controller-manager" not in parts:
            raise RuntimeError(
                "the node needs kube-controller-manager (Deployments, Service endpoints): run `loqua-dev build`"
            )
        for part in parts:
            self.start_part(part, self.load())
        self._write_env(self.load())
        if with_node:
            self._start_node()
        if with_agents:  # (the CRD is installed with the loqua-api part)
            for part in AGENT_PARTS:
                self.start_part(part, self.load())
        _say(f"stack up in {time.monotonic() - started:.1f} s; settings in {self.env_file}")
        return self.env()

    def _prepare_node(self, state: dict) -> dict:
        from loqua_devstack import debian, image

        debian.ensure(["node", "image"], log_dir=self.root / "logs")
        node.ensure_alone(self.node_dir)
        nodecfg = node.init_state(state, self.root)
        nodecfg["enabled"] = True
        self.save(state)
        node.ensure_network(node.NodeNetwork.from_state(nodecfg))
        log = self.log_file("image")
        sandbox = image.ensure_sandbox_image(log)
        nodecfg["sandbox_image"] = sandbox
        self.save(state)
        return state

    def _start_node(self) -> None:
        from loqua_devstack import image

        state = self.load()
        nodecfg = self.node_config(state)
        assert nodecfg is not None
        node.write_configs(self.node_dir, nodecfg, nodecfg["sandbox_image"], self._pki().ca_cert, self.kubeconfig)
        self.start_part("containerd", state)
        node.import_image(nodecfg, image.oci_archive(nodecfg["sandbox_image"]), nodecfg["sandbox_image"])
        # kubelet before kube-proxy: kube-proxy waits for its Node object to exist.
        for part in ("apiserver-bridge", "kube-scheduler", "kubelet", "kube-proxy"):
            self.start_part(part, self.load())
        self.wait_node_ready()

    def load_image(self, name: str) -> None:
        """Make an image built here (buildah) available to the node's containerd."""
        from loqua_devstack import image

        nodecfg = self.node_config(self.load())
        if not nodecfg:
            raise RuntimeError("the stack has no node: run `loqua-dev up --node` first")
        node.import_image(nodecfg, image.oci_archive(name), name)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def wait_node_ready(self, timeout: float = 180) -> None:
        started = time.monotonic()

        def ready() -> bool:
            out = self.kubectl("get", "node", node.NODE_NAME, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        processes.wait_until(ready, f"node {node.NODE_NAME} Ready", timeout, log_file=self.log_file("kubelet"))
        _say(f"node {node.NODE_NAME} Ready in {time.monotonic() - started:.1f} s")

    def set_webhook_url(self, url: str) -> None:
        """Point livekit-server's webhooks at ``url`` (restarts it when the URL changes)."""
        state = self.load()
        if state.get("webhook_url") == url:
            return
        state["webhook_url"] = url
        self.save(state)
        if self._running(state, "livekit"):
            self.start_part("livekit", state)
        self._write_env(self.load())

    def down(self) -> None:
        state = self.load()
        nodecfg = state.get("node") or {}
        if nodecfg.get("enabled"):
            self._down_node(state, nodecfg)
            state = self.load()
        for part in reversed(ALL_PARTS):
            pid = state.get("pids", {}).get(part)
            if self._running(state, part):
                _say(f"stopping {part} (pid {pid})")
                processes.stop(pid, executable=state.get("executables", {}).get(part))
        if state:
            state["pids"] = {}
            state.setdefault("monitoring", {})["enabled"] = False
            if nodecfg.get("enabled"):
                state["node"]["enabled"] = False
                # Back to the stack's own addresses and webhook receiver for the next `up`.
                state["webhook_url"] = f"http://127.0.0.1:{state['ports']['operator_webhook']}/webhooks/livekit"
            self.save(state)

    def _down_node(self, state: dict, nodecfg: dict) -> None:
        """Stop the node and remove all of it: containers, shims, namespaces, mounts, bridge, rules."""
        for part in ("kubelet", "kube-scheduler", "kube-proxy", "apiserver-bridge"):
            if self._running(state, part):
                _say(f"stopping {part}")
                processes.stop(state["pids"][part], executable=state.get("executables", {}).get(part))
        _say("stopping the node's containers")
        node.stop_containers(nodecfg)
        if self._running(state, "containerd"):
            _say("stopping containerd")
            processes.stop(state["pids"]["containerd"], executable=state.get("executables", {}).get("containerd"))
        node.kill_shims(nodecfg)
        node.unmount_under(self.node_dir, node.run_dir(nodecfg))
        node.remove_iptables_rules()
        node.remove_network(node.NodeNetwork.from_state(nodecfg))
        node.clean_state_dirs(self.node_dir, nodecfg)
        for part in NODE_PARTS:
            state.get("pids", {}).pop(part, None)
        self.save(state)
        _say("node removed (containers, mounts, bridge, iptables rules)")

    def status(self) -> dict[str, dict]:
        state = self.load()
        ports = state.get("ports", {})
        where = {
            "etcd": f"http://127.0.0.1:{ports.get('etcd')}",
            "kube-apiserver": f"https://127.0.0.1:{ports.get('apiserver')}",
            "kube-controller-manager": f"https://127.0.0.1:{ports.get('kcm')}",
            "livekit": f"ws://127.0.0.1:{ports.get('livekit')}",
            "loqua-api": f"http://127.0.0.1:{ports.get('loqua_api')}",
            "operator": f"http://127.0.0.1:{ports.get('operator_metrics')}/metrics",
            "tutor": f"http://127.0.0.1:{ports.get('tutor_metrics')}/metrics",
        }
        nodecfg = state.get("node") or {}
        node_ports = nodecfg.get("ports", {})
        where.update(
            {
                "containerd": f"unix://{node.run_dir(nodecfg) / 'containerd.sock'}" if nodecfg else "-",
                "kubelet": f"https://{nodecfg.get('address')}:{node_ports.get('kubelet')}",
                "kube-scheduler": f"https://127.0.0.1:{node_ports.get('scheduler')}",
                "kube-proxy": f"http://127.0.0.1:{node_ports.get('proxy_metrics')}/metrics",
                "apiserver-bridge": f"https://{nodecfg.get('address')}:{ports.get('apiserver')}",
                **{part: f"http://127.0.0.1:{ports.get(part)}" for part in MONITORING_PARTS},
            }
        )
        out = {}
        shown = ALL_PARTS if nodecfg.get("enabled") else PARTS + AGENT_PARTS
        for part in shown if monitoring.enabled(state) else [p for p in shown if p not in MONITORING_PARTS]:
            pid = state.get("pids", {}).get(part)
            out[part] = {"running": self._running(state, part), "pid": pid, "address": where[part]}
        return out

    def any_running(self) -> bool:
        """Whether any part of this stack runs: then someone else owns it, even if a part is down
        (a fault test may have stopped one on purpose)."""
        state = self.load()
        return bool(state) and any(self._running(state, part) for part in ALL_PARTS)

    def is_up(self) -> bool:
        status = self.status()
        return bool(self.load()) and all(status[p]["running"] for p in self._available_parts())


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env
