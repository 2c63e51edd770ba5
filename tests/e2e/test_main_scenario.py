"""`make demo`'s main scenario as a test, on a stack of its own (its own ports and state directory).

It runs the demo exactly as a newcomer would and checks that it passed and narrated every step;
the demo itself verifies each step against the real parts (kube-apiserver, livekit-server with a
real learner, the tutor worker, the Loqua API) and exits non-zero otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

STEPS = (
    "AgentDispatch CRD installed",
    "operator running",
    "tutor worker running",
    "a learner joins; the agent joins and the session starts",
    "the tutor's tools record progress",
    "page refresh: the same agent stays",
    "refresh storm creates no second agent",
    "the learner leaves: Idle, the TTL runs",
    "TTL expires: dispatch and object deleted",
    "the learning session record is in the Loqua API",
)


def test_demo_main_scenario(tmp_path: Path) -> None:
    env = dict(os.environ, LOQUA_DEVSTACK_DIR=str(tmp_path / "devstack"))
    out = subprocess.run(
        [sys.executable, "-m", "loqua_devstack.demo"], env=env, capture_output=True, text=True, timeout=600
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "demo passed" in text
    for step in STEPS:
        assert f"▶ {step}" in text, f"step not narrated: {step}"
    assert "1 session record" in text and "same agent" in text
    assert "local stack stopped" in text  # it started its own stack and left nothing running
