"""Build the stack's Go binaries once, pinned, and cache them outside the repository.

Only the standard library is used here so the builder runs before any package is installed.

Two build recipes:
- ``go install module/cmd@version`` for modules whose go.mod has no ``replace`` directives
  (livekit-server, helm, promtool);
- a small *wrapper module* for those whose go.mod has ``replace`` or ``exclude`` directives
  (kube-apiserver, kube-controller-manager, etcd, promtool), which ``go install`` refuses: the
  wrapper requires the real module, turns each relative ``replace`` into a published version and
  copies the ``exclude`` directives, which only take effect in the main module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loqua_devstack.processes import exclusive_lock

KUBERNETES_VERSION = "1.33.13"
ETCD_VERSION = "3.5.21"
LIVEKIT_VERSION = "1.13.5"
HELM_VERSION = "3.19.0"
# Prometheus' Go module versions are v0.<major*100+minor>.<patch>: v0.307.3 is Prometheus 3.7.3.
PROMETHEUS_MODULE_VERSION = "0.307.3"
# The local node's binaries (`loqua-dev up --node`, `make cluster`): same wrapper, same version.
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy")
ALERTMANAGER_VERSION = "0.28.1"
PROMETHEUS_OPERATOR_VERSION = "0.85.0"
# The monitoring stack (`make cluster MONITORING=1`): built only when asked for (about 20 min the
# first time on 2 cores), never by a plain `loqua-dev build` / `make test`.
MONITORING_BINARIES = ("prometheus", "alertmanager", "prometheus-operator", "prometheus-config-reloader")


def cache_dir() -> Path:
    """Where built binaries live: ``$LOQUA_CACHE_DIR`` or ``$XDG_CACHE_HOME/loqua-agents``."""
    explicit = os.environ.get("LOQUA_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "loqua-agents"


@dataclass(frozen=True)
class GoBinary:
    name: str
    module: str
    version: str
    package: str
    minutes: int  # rough first-build time on 2 cores, shown to the user
    wrapper_replaces_from: str | None = None  # build through a wrapper module around this one
    ldflags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def path(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-v{self.version}"


def _kube_ldflags() -> tuple[str, ...]:
    major, minor, _ = KUBERNETES_VERSION.split(".")
    base = "k8s.io/component-base/version"
    return (
        f"-X {base}.gitVersion=v{KUBERNETES_VERSION}",
        f"-X {base}.gitMajor={major}",
        f"-X {base}.gitMinor={minor}",
        f"-X {base}.gitTreeState=clean",
        "-s -w",
    )


BINARIES: dict[str, GoBinary] = {
    b.name: b
    for b in (
        GoBinary(
            "etcd",
            "go.etcd.io/etcd/server/v3",
            ETCD_VERSION,
            "loqua.local/etcd",  # the wrapper's own main package calls etcdmain.Main
            minutes=2,
            wrapper_replaces_from="go.etcd.io/etcd/server/v3",
            ldflags=("-s -w",),
        ),
        GoBinary(
            "kube-apiserver",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kube-apiserver",
            minutes=8,
            wrapper_replaces_from="k8s.io/kubernetes",
            ldflags=_kube_ldflags(),
        ),
        GoBinary(
            "kube-controller-manager",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            minutes=6,
            wrapper_replaces_from="k8s.io/kubernetes",
            ldflags=_kube_ldflags(),
        ),
        GoBinary(
            "kubelet",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kubelet",
            minutes=3,
            wrapper_replaces_from="k8s.io/kubernetes",
            ldflags=_kube_ldflags(),
        ),
        GoBinary(
            "kube-scheduler",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kube-scheduler",
            minutes=2,
            wrapper_replaces_from="k8s.io/kubernetes",
            ldflags=_kube_ldflags(),
        ),
        GoBinary(
            "kube-proxy",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kube-proxy",
            minutes=2,
            wrapper_replaces_from="k8s.io/kubernetes",
            ldflags=_kube_ldflags(),
        ),
        GoBinary(
            "livekit-server",
            "github.com/livekit/livekit-server",
            LIVEKIT_VERSION,
            "github.com/livekit/livekit-server/cmd/server",
            minutes=5,
        ),
        GoBinary("helm", "helm.sh/helm/v3", HELM_VERSION, "helm.sh/helm/v3/cmd/helm", minutes=3),
        GoBinary(
            "promtool",
            "github.com/prometheus/prometheus",
            PROMETHEUS_MODULE_VERSION,
            "github.com/prometheus/prometheus/cmd/promtool",
            minutes=4,
            wrapper_replaces_from="github.com/prometheus/prometheus",
        ),
        GoBinary(
            "prometheus",
            "github.com/prometheus/prometheus",
            PROMETHEUS_MODULE_VERSION,
            "github.com/prometheus/prometheus/cmd/prometheus",
            minutes=6,
            wrapper_replaces_from="github.com/prometheus/prometheus",
        ),
        GoBinary(
            "alertmanager",
            "github.com/prometheus/alertmanager",
            ALERTMANAGER_VERSION,
            "github.com/prometheus/alertmanager/cmd/alertmanager",
            minutes=4,
        ),
        GoBinary(
            "prometheus-operator",
            "github.com/prometheus-operator/prometheus-operator",
            PROMETHEUS_OPERATOR_VERSION,
            "github.com/prometheus-operator/prometheus-operator/cmd/operator",
            minutes=8,
            wrapper_replaces_from="github.com/prometheus-operator/prometheus-operator",
        ),
        GoBinary(
            "prometheus-config-reloader",
            "github.com/prometheus-operator/prometheus-operator",
            PROMETHEUS_OPERATOR_VERSION,
            "github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader",
            minutes=2,
            wrapper_replaces_from="github.com/prometheus-operator/prometheus-operator",
        ),
    )
}

ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


class BuildError(RuntimeError):
    """A binary could not be built; the message says what is missing and where to look."""


def _log(msg: str) -> None:
    print(f"[loqua-dev build] {msg}", file=sys.stderr, flush=True)


def require_go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError(
            "Go is not installed or not on PATH: the local stack builds etcd, kube-apiserver, "
            "livekit-server, helm and promtool from Go modules. Install Go >= 1.24 and retry."
        )
    return go


def run_logged(
    cmd: list[str], cwd: Path | None, log_file: Path, env: dict[str, str], say: Callable[[str], None]
) -> int:
    """Run ``cmd`` with its output appended to ``log_file``, saying every 30 s that it still runs;
    returns the exit code."""
    with log_file.open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}  (in {cwd})\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        last_note = started
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last_note >= 30:
                last_note = time.monotonic()
                say(
                    f"  ... {Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} still running "
                    f"({int(last_note - started)} s so far)"
                )
    return int(proc.returncode)


def _run(cmd: list[str], cwd: Path, log_file: Path, env: dict[str, str]) -> None:
    rc = run_logged(cmd, cwd, log_file, env, _log)
    if rc != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-15:]
        hint = ""
        joined = "\n".join(tail)
        if "proxy.golang.org" in joined or "dial tcp" in joined or "lookup" in joined:
            hint = " The Go module proxy could not be reached (check GOPROXY and the network)."
        raise BuildError(f"`{' '.join(cmd)}` failed (exit {rc}).{hint} Full log: {log_file}\n" + joined)


def _module_gomod(go: str, module: str, version: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@v{version}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cache_dir(),
    )
    if out.returncode != 0:
        raise BuildError(
            f"could not download {module}@v{version} from the Go module proxy: "
            f"{out.stdout.strip() or out.stderr.strip()}"
        )
    return Path(json.loads(out.stdout)["GoMod"]).read_text()


def published_replaces(gomod: str, staging_version_for: dict[str, str]) -> dict[str, str]:
    """Turn a module's relative ``replace X => ./path`` lines into ``X => X <published version>``.

    ``staging_version_for`` maps a module-path prefix to the version published for it, e.g.
    ``{"k8s.io/": "v0.33.13"}`` or ``{"go.etcd.io/etcd/": "v3.5.21"}``.
    """
    replaces: dict[str, str] = {}
    for match in re.finditer(r"^\s*(?:replace\s+)?(\S+)\s*=>\s*(\.\.?/\S*)\s*$", gomod, re.M):
        mod = match.group(1)
        for prefix, version in staging_version_for.items():
            if mod.startswith(prefix):
                replaces[mod] = version
    return replaces


def exclude_directives(gomod: str) -> list[str]:
    """The ``exclude`` lines and blocks of a go.mod, verbatim."""
    return re.findall(r"^exclude\s+(?:\([^)]*\)|[^\n]+)", gomod, re.M)


def module_dir(module: str, version: str) -> Path:
    """The unpacked source of a Go module (downloaded through the module proxy once)."""
    go = require_go()
    cache_dir().mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@v{version}"], capture_output=True, text=True, cwd=cache_dir()
    )
    if out.returncode != 0:
        raise BuildError(f"could not download {module}@v{version}: {out.stdout.strip() or out.stderr.strip()}")
    return Path(json.loads(out.stdout)["Dir"])


def _wrapper_gomod(binary: GoBinary, go: str, env: dict[str, str]) -> str:
    upstream = _module_gomod(go, binary.module, binary.version, env)
    excludes = exclude_directives(upstream)
    if binary.module == "k8s.io/kubernetes":
        minor = KUBERNETES_VERSION.split(".", 1)[1]
        replaces = published_replaces(upstream, {"k8s.io/": f"v0.{minor}"})
    elif binary.module.startswith("go.etcd.io/"):
        # etcd's server requires its sibling modules at real published versions (client/v2 is
        # v2.305.x, not v3.5.x); its relative replaces only matter inside etcd's own repo.
        replaces = {}
    elif binary.module == "github.com/prometheus-operator/prometheus-operator":
        # pkg/apis/monitoring and pkg/client are published at the operator's own version.
        replaces = published_replaces(upstream, {binary.module + "/": f"v{binary.version}"})
    else:
        replaces = {}
    lines = [
        "module loqua.local/" + binary.name,
        "",
        "go 1.24.0",
        "",
        f"require {binary.module} v{binary.version}",
        "",
    ]
    lines += [f"replace {mod} => {mod} {ver}" for mod, ver in sorted(replaces.items())]
    lines += ["", *excludes]
    return "\n".join(lines) + "\n"


def build(binary: GoBinary, force: bool = False) -> Path:
    """Build one binary unless a cached build exists; returns its path."""
    if binary.path.exists() and not force:
        return binary.path
    go = require_go()
    root = cache_dir()
    (root / "bin").mkdir(parents=True, exist_ok=True)
    work = root / "src" / f"{binary.name}-v{binary.version}"
    work.mkdir(parents=True, exist_ok=True)
    log_file = root / "build-logs" / f"{binary.name}-v{binary.version}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
    _log(
        f"building {binary.name} v{binary.version} (first time only, about {binary.minutes} min "
        f"on 2 cores; log: {log_file})"
    )
    started = time.monotonic()
    tmp_out = binary.path.parent / (binary.path.name + ".partial")
    ldflags = " ".join(binary.ldflags)
    if binary.wrapper_replaces_from:
        (work / "go.mod").write_text(_wrapper_gomod(binary, go, env))
        if binary.name == "etcd":
            (work / "main.go").write_text(ETCD_MAIN)
            target = "."
        else:
            target = binary.package
        cmd = [go, "build", "-mod=mod", "-trimpath", "-o", str(tmp_out)]
        if ldflags:
            cmd += ["-ldflags", ldflags]
        _run([*cmd, target], work, log_file, env)
    else:
        gobin = work / "gobin"
        gobin.mkdir(exist_ok=True)
        cmd = [go, "install", "-trimpath"]
        if ldflags:
            cmd += ["-ldflags", ldflags]
        _run([*cmd, f"{binary.package}@v{binary.version}"], work, log_file, dict(env, GOBIN=str(gobin)))
        built = gobin / binary.package.rsplit("/", 1)[-1]
        shutil.move(str(built), tmp_out)
    tmp_out.chmod(0o755)
    tmp_out.replace(binary.path)
    _log(f"built {binary.name} in {time.monotonic() - started:.0f} s -> {binary.path}")
    return binary.path


def _build_lock() -> contextlib.AbstractContextManager[None]:
    """One builder at a time per cache (two checkouts may run `make test` at once)."""
    return exclusive_lock(
        cache_dir() / "build.lock", lambda: _log("another build is running for this cache; waiting for it to finish")
    )


def ensure_all(names: list[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Build every missing binary (or only ``names``), showing what is left to do."""
    wanted = [BINARIES[n] for n in (names or [n for n in BINARIES if n not in MONITORING_BINARIES])]
    if not force and all(b.path.exists() for b in wanted):
        return {b.name: b.path for b in wanted}
    with _build_lock():
        return _ensure_all_locked(wanted, force)


def _ensure_all_locked(wanted: list[GoBinary], force: bool) -> dict[str, Path]:
    missing = [b for b in wanted if force or not b.path.exists()]
    if missing:
        total = sum(b.minutes for b in missing)
        _log(
            f"{len(missing)} binaries to build ({', '.join(b.name for b in missing)}); "
            f"expect about {total} min on a 2-core machine. Cached under {cache_dir()} afterwards."
        )
    paths: dict[str, Path] = {}
    for i, b in enumerate(wanted, 1):
        if b in missing:
            _log(f"[{i}/{len(wanted)}]")
        paths[b.name] = build(b, force=force)
    return paths


def path_of(name: str) -> Path:
    """Path to a cached binary, with a clear error if it has not been built."""
    binary = BINARIES[name]
    if not binary.path.exists():
        raise BuildError(f"{name} v{binary.version} is not built yet: run `loqua-dev build`.")
    return binary.path


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m`
    try:
        ensure_all(sys.argv[1:] or None)
    except BuildError as exc:
        _log(f"error: {exc}")
        sys.exit(1)
