"""The local node: containerd + runc + CNI, kubelet, kube-scheduler and kube-proxy on this machine.

The same parts as a kind node, run as processes of the stack instead of inside a container:

- a Linux bridge the stack creates, with its own /24 (the node's address is the bridge's); pods
  get veths on it from the CNI ``bridge`` plugin and routes only to that /24 and to the Service
  range: no default route, no masquerade, IP forwarding untouched, so nothing a pod sends can
  leave the machine;
- containerd (Debian's package) with its own root, state and socket, the sandbox image built here
  and ``restrict_oom_score_adj`` (this machine does not let a process raise its OOM priority);
- kubelet (built from Go modules like kube-apiserver, same version) with the cgroupfs driver,
  serving on the bridge address only, healthz on 127.0.0.1;
- kube-scheduler on 127.0.0.1, and kube-proxy (iptables) so that Service addresses route: pods
  reach the API server through the ``kubernetes`` Service (in-cluster config), and livekit-server
  reaches the operator's webhook Service;
- the stack's own servers gain an address on the bridge (the API server through a forwarder on
  the bridge address, livekit-server and the Loqua API by binding it as well).

``teardown`` removes everything: containers and their shims, network namespaces, mounts, the
bridge, the Service route and kube-proxy's iptables chains.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loqua_devstack import binaries, processes

NODE_NAME = "loqua-node"
SERVICE_CIDR = "10.0.0.0/24"  # the API server's --service-cluster-ip-range
CNI_BIN_DIR = Path("/usr/lib/cni")
NODE_PARTS = ("containerd", "kubelet", "kube-scheduler", "kube-proxy", "apiserver-bridge")


def _say(msg: str) -> None:
    print(f"[loqua-dev node] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()}")
    return result


def pick_subnet(taken: list[str]) -> ipaddress.IPv4Network:
    """A /24 in 10.244.0.0/16 that overlaps no route of this machine (and not the Service range)."""
    used = [ipaddress.ip_network(n, strict=False) for n in [*taken, SERVICE_CIDR]]
    for candidate in ipaddress.ip_network("10.244.0.0/16").subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError("no free /24 in 10.244.0.0/16 for the node's bridge")


def _routes() -> list[str]:
    out = _run(["ip", "-j", "route", "show", "table", "all"], check=False).stdout or "[]"
    return [r["dst"] for r in json.loads(out) if r.get("dst", "default") not in ("default",) and "/" in r["dst"]]


@dataclass(frozen=True)
class NodeNetwork:
    bridge: str
    subnet: str
    address: str  # the bridge's address: the node's InternalIP and the pods' gateway

    @classmethod
    def from_state(cls, node: dict) -> NodeNetwork:
        return cls(node["bridge"], node["subnet"], node["address"])


def init_state(state: dict, root: Path) -> dict:
    """The node's part of the stack's state: names, addresses and ports, chosen once."""
    node = state.setdefault("node", {})
    key = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    node.setdefault("key", key)
    node.setdefault("bridge", f"lq{key}")
    if "subnet" not in node:
        subnet = pick_subnet(_routes())
        node["subnet"] = str(subnet)
        node["address"] = str(next(subnet.hosts()))
    ports = node.setdefault("ports", {})
    for name in ("kubelet", "kubelet_healthz", "scheduler", "proxy_metrics", "proxy_healthz"):
        ports.setdefault(name, processes.free_port())
    return node


def run_dir(node: dict) -> Path:
    """containerd's state and socket: short paths on a tmpfs (unix sockets allow 108 bytes)."""
    return Path("/run") / f"loqua-node-{node['key']}"


def other_nodes(node_dir: Path) -> list[tuple[int, str]]:
    """kubelet / kube-proxy processes of another node on this machine (pid, command line)."""
    mine = str(node_dir.resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if args and Path(args[0]).name.startswith(("kubelet", "kube-proxy")) and not any(mine in a for a in args):
            found.append((int(proc.name), " ".join(args)[:200]))
    return found


def ensure_alone(node_dir: Path) -> None:
    """One local node per machine: two would share the host's Service route (10.0.0.0/24), its iptables
    chains (kube-proxy rewrites all KUBE-* chains) and the kubepods cgroups, and break each other."""
    others = other_nodes(node_dir)
    if others:
        pid, cmd = others[0]
        raise RuntimeError(
            f"another local node already runs on this machine (pid {pid}: {cmd}); two nodes would fight over "
            "the Service route, kube-proxy's iptables chains and the kubepods cgroups. Stop it first "
            "(`make cluster-down` in its checkout), then retry."
        )


# ---- network ----------------------------------------------------------------------------------
def ensure_network(net: NodeNetwork) -> None:
    """The bridge with the node's address, and the Service range routed onto it (so a Service
    address never takes the default route, even before kube-proxy has written its rules)."""
    if _run(["ip", "link", "show", net.bridge], check=False).returncode != 0:
        _run(["ip", "link", "add", net.bridge, "type", "bridge"])
    prefix = ipaddress.ip_network(net.subnet).prefixlen
    addrs = _run(["ip", "-j", "addr", "show", "dev", net.bridge]).stdout
    if net.address not in addrs:
        _run(["ip", "addr", "add", f"{net.address}/{prefix}", "dev", net.bridge])
    _run(["ip", "link", "set", net.bridge, "up"])
    _run(["ip", "route", "replace", SERVICE_CIDR, "dev", net.bridge, "src", net.address])


def remove_network(net: NodeNetwork) -> None:
    _run(["ip", "route", "del", SERVICE_CIDR, "dev", net.bridge], check=False)
    # veths of pods whose namespace is gone are gone with it; any left are removed with the bridge.
    links = json.loads(_run(["ip", "-j", "link", "show", "master", net.bridge], check=False).stdout or "[]")
    for link in links:
        _run(["ip", "link", "del", link["ifname"]], check=False)
    _run(["ip", "link", "del", net.bridge], check=False)


def cni_config(net: NodeNetwork, ipam_dir: Path) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "loqua",
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                # The stack owns the bridge's address; not a gateway: the plugin would otherwise
                # turn on IP forwarding for the whole machine.
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.subnet, "rangeStart": _nth(net.subnet, 10)}]],
                    # Only the Service range, through the node; no default route.
                    "routes": [{"dst": SERVICE_CIDR, "gw": net.address}],
                    "dataDir": str(ipam_dir),
                },
            },
        ],
    }


def _nth(subnet: str, n: int) -> str:
    return str(ipaddress.ip_network(subnet)[n])


# ---- configuration files ----------------------------------------------------------------------
def containerd_config(node_dir: Path, node: dict, sandbox_image: str) -> str:
    run = run_dir(node)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{node_dir / "containerd" / "root"}"
state = "{run / "containerd"}"
[grpc]
  address = "{run / "containerd.sock"}"
[ttrpc]
  address = "{run / "containerd.sock.ttrpc"}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{node_dir / "containerd" / "opt"}"
[{cri}]
  sandbox_image = "{sandbox_image}"
  # Without it runc fails to start any container here ("can't get final child's PID from pipe"):
  # the machine does not grant raising the OOM priority.
  restrict_oom_score_adj = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{node_dir / "cni" / "net.d"}"
"""


def kubelet_config(node_dir: Path, node: dict, ca_cert: Path) -> dict:
    p = node["ports"]
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node["address"],  # the API server reaches it there for logs and exec
        "port": p["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": p["kubelet_healthz"],
        "containerRuntimeEndpoint": f"unix://{run_dir(node) / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # this machine mounts cgroup v1
        "failSwapOn": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        # No DNS server on the node network: pods get an empty resolv.conf, not the machine's.
        "resolvConf": str(node_dir / "resolv.conf"),
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 30,
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(node: dict, kubeconfig: Path) -> dict:
    p = node["ports"]
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": node["address"],
        "clusterCIDR": node["subnet"],
        "healthzBindAddress": f"127.0.0.1:{p['proxy_healthz']}",
        "metricsBindAddress": f"127.0.0.1:{p['proxy_metrics']}",
        # NodePorts only on the node's bridge address; never route_localnet on this machine.
        "nodePortAddresses": [node["subnet"]],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        # The conntrack table's sysctls belong to the machine: leave them alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


def write_configs(node_dir: Path, node: dict, sandbox_image: str, ca_cert: Path, kubeconfig: Path) -> None:
    net = NodeNetwork.from_state(node)
    for sub in ("containerd/root", "cni/net.d", "cni/ipam", "kubelet"):
        (node_dir / sub).mkdir(parents=True, exist_ok=True)
    run_dir(node).mkdir(parents=True, exist_ok=True)
    files = {
        node_dir / "containerd" / "config.toml": containerd_config(node_dir, node, sandbox_image),
        node_dir / "cni" / "net.d" / "10-loqua.conflist": json.dumps(
            cni_config(net, node_dir / "cni" / "ipam"), indent=2
        ),
        node_dir / "resolv.conf": "",
        node_dir / "kubelet" / "config.yaml": json.dumps(kubelet_config(node_dir, node, ca_cert), indent=2),
        node_dir / "kube-proxy.yaml": json.dumps(kube_proxy_config(node, kubeconfig), indent=2),
    }
    for path, text in files.items():
        # Only when changed: kube-proxy exits when its configuration file is written to.
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


# ---- processes --------------------------------------------------------------------------------
def part_specs(node_dir: Path, node: dict, kubeconfig: Path, apiserver_port: int) -> dict[str, tuple[list[str], dict]]:
    """Command line and environment of each node part (the stack spawns and probes them)."""
    p = node["ports"]
    path_env = {"PATH": f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{os.environ.get('PATH', '')}"}
    return {
        "containerd": (["containerd", "--config", str(node_dir / "containerd" / "config.toml")], path_env),
        "kubelet": (
            [
                str(binaries.path_of("kubelet")),
                f"--config={node_dir / 'kubelet' / 'config.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={node_dir / 'kubelet' / 'root'}",
                f"--cert-dir={node_dir / 'kubelet' / 'pki'}",
                f"--node-ip={node['address']}",
                f"--hostname-override={NODE_NAME}",
                # cAdvisor's containerd factory (deprecated flag, still the only way to set it):
                # without it cAdvisor looks at /run/containerd/containerd.sock, finds nothing and
                # reports bare cgroups, with no container/pod/namespace labels on /metrics/cadvisor.
                f"--containerd={run_dir(node) / 'containerd.sock'}",
                "--v=1",
            ],
            path_env,
        ),
        "kube-scheduler": (
            [
                str(binaries.path_of("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                "--leader-elect=false",
                "--v=1",
            ],
            {},
        ),
        "kube-proxy": (
            [str(binaries.path_of("kube-proxy")), f"--config={node_dir / 'kube-proxy.yaml'}", "--v=1"],
            path_env,
        ),
        # The API server listens on 127.0.0.1; pods reach it on the node's address (the endpoint
        # of the `kubernetes` Service) through this forwarder.
        "apiserver-bridge": (
            [
                "socat",
                f"TCP-LISTEN:{apiserver_port},bind={node['address']},reuseaddr,fork",
                f"TCP:127.0.0.1:{apiserver_port}",
            ],
            {},
        ),
    }


def ctr(node: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ctr", "--address", str(run_dir(node) / "containerd.sock"), "--namespace", "k8s.io", *args], check)


def import_image(node: dict, archive: Path, name: str) -> None:
    """Load an OCI archive into containerd's k8s.io namespace (once per image)."""
    listed = ctr(node, "images", "ls", "-q").stdout.split()
    if name in listed:
        return
    # buildah names the image in the archive by the reference given at push time.
    ctr(node, "images", "import", str(archive))
    if name not in ctr(node, "images", "ls", "-q").stdout.split():
        raise RuntimeError(f"imported {archive} but containerd does not list {name}")


# ---- teardown ---------------------------------------------------------------------------------
def _netns_of_sandboxes(node: dict) -> list[str]:
    paths = []
    containers = ctr(node, "containers", "ls", "-q", check=False).stdout.split()
    for cid in containers:
        info = ctr(node, "containers", "info", cid, check=False).stdout
        try:
            spec = json.loads(info).get("Spec") or {}
        except json.JSONDecodeError:
            continue
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/"):
                paths.append(ns["path"])
    return sorted(set(paths))


def stop_containers(node: dict) -> None:
    """Kill every container of the node and delete it; remove the pods' network namespaces."""
    sock = run_dir(node) / "containerd.sock"
    if not sock.exists():
        return
    netns = _netns_of_sandboxes(node)
    tasks = ctr(node, "tasks", "ls", "-q", check=False).stdout.split()
    for task in tasks:
        ctr(node, "tasks", "kill", "--signal", "SIGKILL", task, check=False)
    deadline = time.monotonic() + 15
    for task in tasks:
        while time.monotonic() < deadline and ctr(node, "tasks", "delete", task, check=False).returncode != 0:
            time.sleep(0.3)
    for cid in ctr(node, "containers", "ls", "-q", check=False).stdout.split():
        ctr(node, "containers", "delete", cid, check=False)
    for path in netns:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", path], capture_output=True)
            os.unlink(path)


def kill_shims(node: dict) -> None:
    """containerd's shims outlive containerd by design: stop the ones of this node's containerd."""
    address = str(run_dir(node) / "containerd.sock")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and address.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def unmount_under(*roots: Path) -> None:
    """Unmount whatever is mounted below ``roots`` (kubelet's volumes, containerd's rootfs and shm)."""
    prefixes = [str(r.resolve()) + "/" for r in roots]
    for _ in range(3):
        mounts = []
        with open("/proc/self/mountinfo") as info:
            for line in info:
                target = line.split()[4].replace("\\040", " ")
                if any(target.startswith(p) for p in prefixes):
                    mounts.append(target)
        if not mounts:
            return
        for target in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)


def remove_iptables_rules() -> None:
    """kube-proxy's and kubelet's chains (KUBE-*), which both leave behind when they stop."""
    with contextlib.suppress(binaries.BuildError, subprocess.TimeoutExpired):
        subprocess.run([str(binaries.path_of("kube-proxy")), "--cleanup"], capture_output=True, timeout=60)
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle"):
            rules = _run([tool, "-t", table, "-S"], check=False).stdout.splitlines()
            for rule in rules:
                parts = rule.split()
                if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and "KUBE-" in rule:
                    subprocess.run([tool, "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True)
            chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
            for chain in chains:
                subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def mounts_under(*roots: Path) -> list[str]:
    prefixes = [str(r.resolve()) + "/" for r in roots]
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info if any(line.split()[4].startswith(p) for p in prefixes)]


def clean_state_dirs(node_dir: Path, node: dict) -> None:
    """Forget the pods' IP reservations and kubelet's pod directories (the next node starts empty)."""
    shutil.rmtree(node_dir / "cni" / "ipam", ignore_errors=True)
    shutil.rmtree(node_dir / "kubelet" / "root" / "pods", ignore_errors=True)
    shutil.rmtree(run_dir(node), ignore_errors=True)
