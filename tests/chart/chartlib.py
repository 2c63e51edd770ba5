"""Helpers of the chart tests: the pinned helm/promtool binaries and `helm template` rendering."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from loqua_devstack import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "loqua-agents"
EXAMPLES = sorted((CHART / "examples").glob("values-*.yaml"))
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
NAMESPACE = "loqua-test"
RELEASE = "rel"
# The locally built helm carries no ldflags, so its default capabilities say Kubernetes v1.20,
# below the chart's kubeVersion; render for the stack's version instead.
KUBE_VERSION = "1.33.0"
MONITORING_API = "monitoring.coreos.com/v1"
TIERS = {
    "basic-conversation": {"cpu": "2", "memory": "4Gi", "sessions": 10, "req_cpu": "1000m", "req_mem": "2Gi"},
    "ai-processing": {"cpu": "4", "memory": "8Gi", "sessions": 5, "req_cpu": "2000m", "req_mem": "4Gi"},
    "specialized-tutor": {"cpu": "2", "memory": "4Gi", "sessions": 3, "req_cpu": "1000m", "req_mem": "2Gi"},
}


def binary(name: str, env_var: str, env: dict[str, str] | None = None) -> str:
    """The pinned binary: the stack's env var when given, else the devstack cache; skip if not built."""
    explicit = (env or {}).get(env_var) or os.environ.get(env_var)
    if explicit and Path(explicit).is_file():
        return explicit
    try:
        return str(binaries.path_of(name))
    except binaries.BuildError as exc:
        pytest.skip(f"{name} is not available ({exc}); run `loqua-dev build` or set {env_var}")


class HelmError(RuntimeError):
    pass


class Helm:
    def __init__(self, path: str) -> None:
        self.path = path

    def run(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        out = subprocess.run([self.path, *args], capture_output=True, text=True, timeout=120, env=full_env)
        if check and out.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
        return out

    def template(
        self,
        values: dict[str, Any] | None = None,
        files: Iterable[Path] = (),
        api_versions: Iterable[str] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> subprocess.CompletedProcess:
        """`helm template` of the chart with value files, then ``values`` on top."""
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
        for f in files:
            args += ["-f", str(f)]
        for api in api_versions:
            args += ["--api-versions", api]
        with tempfile.TemporaryDirectory() as tmp:
            if values is not None:
                path = Path(tmp) / "values.yaml"
                path.write_text(yaml.safe_dump(values))
                args += ["-f", str(path)]
            return self.run(*args, check=False)

    def render(self, values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """The rendered objects; fails the test if helm refuses."""
        out = self.template(values, **kwargs)
        if out.returncode != 0:
            raise HelmError(f"helm template failed ({out.returncode}):\n{out.stderr}")
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    def render_error(self, values: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """`helm template` that must fail; returns its error output."""
        out = self.template(values, **kwargs)
        assert out.returncode != 0, f"helm template should have failed, rendered:\n{out.stdout[:2000]}"
        return out.stderr


# ---- lookups in rendered objects -----------------------------------------------------------------


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


def deployment(objs: list[dict[str, Any]], component: str, worker: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in of_kind(objs, "Deployment")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        and (worker is None or o["metadata"]["labels"].get("loqua.app/worker") == worker)
    ]
    assert len(found) == 1, f"expected one {component} Deployment {worker or ''}, found {len(found)}"
    return found[0]


def container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> the EnvVar (value or valueFrom)."""
    return {e["name"]: e for e in container(dep)["env"]}


def env_values(dep: dict[str, Any]) -> dict[str, str]:
    return {name: e["value"] for name, e in env_of(dep).items() if "value" in e}


def worker_values(*workers: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"workers": list(workers), **top}
