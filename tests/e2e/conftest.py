"""Fixtures for end-to-end tests of the tutor worker: `loqua-tutor start` as a real process against
the running local stack (livekit-server, the reference Loqua API), clients for LiveKit and the API's
admin endpoints, and the worker's own /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import api
from prometheus_client.parser import text_string_to_metric_families

from loqua_devstack.learner import Learner
from loqua_devstack.services import ServiceProcess, tutor_process

# Figures the browser tests measure (test_learner_page.py), printed as one line at the end of the run.
LEARNER_FIGURES = pytest.StashKey[dict[str, Any]]()

# Job executor of the e2e worker. `process` (the production default) is fast enough on 2 cores:
# two warm job processes are ready before the first dispatch. Override with E2E_TUTOR_EXECUTOR.
EXECUTOR = os.environ.get("E2E_TUTOR_EXECUTOR", "process")
PARTICIPANT_WAIT_TIMEOUT = 8  # seconds: the "learner never joins" test waits this long
PROGRESS_INTERVAL = 2  # seconds between progress updates


@pytest.fixture(scope="module")
def tutor_agent_name() -> str:
    """A unique explicit-dispatch name: other people's workers on the shared stack never get our jobs."""
    return f"e2e-tutor-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def running_tutor(
    stack_env: dict[str, str], log_file: Path, agent_name: str, extra_env: dict[str, str]
) -> Iterator[ServiceProcess]:
    """`loqua-tutor start`, registered with livekit-server; stopped (SIGTERM, then SIGKILL) at the end."""
    proc = tutor_process(stack_env, log_file, agent_name=agent_name, extra_env=extra_env).start()
    try:
        proc.wait_healthy(timeout=90, body="ok")
        yield proc
    finally:
        proc.stop(timeout=30)  # whatever is left (a failed start, a hung drain): SIGTERM, then SIGKILL the group


@pytest.fixture(scope="module")
def tutor_worker(stack_env: dict[str, str], logs_dir: Path, tutor_agent_name: str) -> Iterator[ServiceProcess]:
    """`loqua-tutor start`, registered with livekit-server; SIGTERM at the end must stop it cleanly."""
    env = {
        "JOB_EXECUTOR": EXECUTOR,
        "PARTICIPANT_WAIT_TIMEOUT_SECONDS": str(PARTICIPANT_WAIT_TIMEOUT),
        "PROGRESS_INTERVAL_SECONDS": str(PROGRESS_INTERVAL),
        "FINALIZE_TIMEOUT_SECONDS": "30",
        "DRAIN_TIMEOUT_SECONDS": "30",
        # DEBUG: more output to scan for leaked secrets.
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "text",
    }
    with running_tutor(stack_env, logs_dir / f"tutor-{tutor_agent_name}.log", tutor_agent_name, env) as proc:
        yield proc
        # SIGTERM to the worker's main process only, as the kubelet sends it to the container's PID 1
        # (a SIGTERM to the whole process group: test_tutor_drain.py).
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGTERM)
        code = proc.proc.wait(timeout=90)
    log = proc.log_text()
    assert code == 0, f"loqua-tutor exited with {code} after SIGTERM; see {proc.log_file}"
    assert "SIGTERM: draining" in log and "worker stopped" in log, log[-2000:]
    # (An idle job process still starting up at shutdown is killed by livekit-agents and logged as
    # "process exited with non-zero exit code -10": not a lost session, so not checked here.)
    assert "session record LOST" not in log


@pytest.fixture(scope="module")
async def lk(stack_env: dict[str, str]) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(stack_env["LIVEKIT_URL"], stack_env["LIVEKIT_API_KEY"], stack_env["LIVEKIT_API_SECRET"])
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def admin(stack_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The Loqua API's /admin endpoints (users, records, faults)."""
    async with httpx.AsyncClient(
        base_url=stack_env["LOQUA_API_URL"],
        timeout=15,
        headers={"Authorization": f"Bearer {stack_env['LOQUA_ADMIN_TOKEN']}"},
    ) as client:
        yield client


async def until(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.25) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


class WorkerMetrics:
    """Reads the worker's Prometheus exposition (job-process series are merged in by the worker)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def samples(self) -> list[tuple[str, dict[str, str], float]]:
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(self.url)
        resp.raise_for_status()
        return [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples
        ]

    async def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(
            v for n, lab, v in await self.samples() if n == name and all(lab.get(k) == x for k, x in labels.items())
        )


@pytest.fixture(scope="module")
def worker_metrics(tutor_worker: ServiceProcess) -> WorkerMetrics:
    return WorkerMetrics(tutor_worker.metrics_url)


@dataclass
class Cleanup:
    rooms: list[str] = field(default_factory=list)
    learners: list[Learner] = field(default_factory=list)


@pytest.fixture(scope="module")
async def cleanup(lk: api.LiveKitAPI) -> AsyncIterator[Cleanup]:
    """Learners leave and our rooms are deleted at the end of the module, whatever happened."""
    c = Cleanup()
    yield c
    for learner in c.learners:
        with contextlib.suppress(Exception):  # best effort: the test result is what matters
            await learner.leave()
    for room in c.rooms:
        with contextlib.suppress(api.TwirpError):
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))


def loqua_dev(stack_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`loqua-dev ARGS` as a user runs it, against the session's stack."""
    env = {**os.environ, "LOQUA_DEVSTACK_DIR": stack_env["DEVSTACK_DIR"]}
    return subprocess.run(
        [sys.executable, "-m", "loqua_devstack.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="session")
def learner_figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The browser tests' figures of this run (also written to learner-page-figures.json)."""
    return request.config.stash.setdefault(LEARNER_FIGURES, {})


def learner_figures_line(f: dict[str, Any]) -> str:
    """One line for the notes: reloads, page load → tutor present (median of 10), the screenshot."""
    parts = []
    if "reloads" in f:
        parts.append(
            f"{f['reloads']} reloads (+{f.get('rapid_reloads', 0)} back to back) → 1 AgentDispatch, "
            "1 LiveKit dispatch, 1 agent, 1 session; "
            f"reload → tutor present median {f['reload_agent_present_median_ms']} ms"
        )
    if "fresh_load_agent_present_median_ms" in f:
        parts.append(
            f"fresh page load → tutor present median {f['fresh_load_agent_present_median_ms']} ms "
            f"of {f['fresh_loads']} (new dispatch each)"
        )
    if "first_load_agent_present_ms" in f:
        parts.append(f"first load {f['first_load_agent_present_ms']} ms")
    if "screenshot" in f:
        parts.append(f"screenshot {f['screenshot']}")
    return "learner page: " + "; ".join(parts)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    figures = config.stash.get(LEARNER_FIGURES, None)
    if figures:
        terminalreporter.write_line(learner_figures_line(figures))
