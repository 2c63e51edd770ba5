"""The image recipe (no Docker engine here: static checks of deploy/Dockerfile)."""

from __future__ import annotations

import re

import yaml

from tests.chart.chartlib import CHART, ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_base_image_is_a_pinned_slim_python() -> None:
    instructions = _instructions()
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)
    froms = [a.split()[0] for kind, a in instructions if kind == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image


def test_runs_as_the_non_root_uid_of_the_chart() -> None:
    users = [a for kind, a in _instructions() if kind == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert values["containerSecurityContext"]["runAsUser"] == 10001


def test_installs_the_project_with_the_constraints_and_both_entry_points() -> None:
    text = DOCKERFILE.read_text()
    # Dependencies in their own layer, before any code is copied: a code change reuses it.
    deps = text.index("pip install -c constraints.txt -r /tmp/requirements.txt")
    assert text.index("COPY pyproject.toml constraints.txt ./") < deps < text.index("COPY common common")
    assert re.search(r"pip install --no-deps -c constraints\.txt \"?\.", text)
    for entry in ("loqua-operator", "loqua-tutor"):
        assert f"{entry} --help" in text  # the build proves both console scripts exist
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'loqua-operator = "loqua_operator.cli:main"' in pyproject
    assert 'loqua-tutor = "loqua_tutor.cli:main"' in pyproject


def test_only_production_code_goes_into_the_image() -> None:
    copies = [a for kind, a in _instructions() if kind == "COPY"]
    assert not any("devstack" in c or "tests" in c for c in copies), copies
    assert "rm -f /opt/venv/bin/loqua-dev" in DOCKERFILE.read_text()


def test_dockerignore_keeps_only_the_sources() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**"
    for kept in (
        "!pyproject.toml",
        "!constraints.txt",
        "!README.md",
        "!operator/**",
        "!agent/**",
        "!common/**",
    ):
        assert kept in ignore
    assert "!devstack/**" not in ignore  # the local stack is not shipped


def test_chart_image_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/loqua/loqua-agents"
    assert values["image"]["tag"] == ""  # the chart's appVersion
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and chart["appVersion"] == version.group(1)
