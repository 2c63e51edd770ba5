"""The worker process: registration with LiveKit, the concurrency cap, drain on SIGTERM, metrics.

livekit-agents has no "max jobs" option. The cap comes from two places:

- ``load_fnc`` reports ``running jobs / cap``. livekit-server picks a worker at random weighted by
  ``1 - load``, so a worker at its cap (load 1.0) has weight 0 and is not offered jobs while any
  other worker has room;
- ``request_fnc`` rejects (without terminating, so livekit-server tries the next worker) any
  request that would exceed the cap - offers that raced the 2.5 s load report - and every request
  while draining. Both are counted in ``loqua_tutor_jobs_rejected_total{reason}``.

livekit-agents' own ``load_threshold`` is disabled (infinite) on purpose: in 1.8.9 it estimates a
job's load as ``threshold / num_idle_processes`` while no job is running yet, which declares an
idle worker unavailable to the second of two near-simultaneous requests; livekit-server 1.13.5
does not retry a job that no worker accepted, so that dispatch would simply never get an agent.
While draining the worker still reports itself full (``WS_FULL``).

On SIGTERM/SIGINT the worker drains: it reports itself full, waits up to ``DRAIN_TIMEOUT_SECONDS``
for running sessions to end on their own, then closes; closing ends the remaining jobs, whose
sessions finalize (final progress and session record) within ``FINALIZE_TIMEOUT_SECONDS``. A
second signal skips the rest of the drain. Only the main process acts on SIGTERM, also when it is
sent to the whole process group (``loqua_tutor.forkserver``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit.agents import AgentServer, JobExecutorType, JobRequest, WorkerPermissions
from prometheus_client import REGISTRY, CollectorRegistry

from loqua_common.metrics import serve_http
from loqua_tutor import __version__
from loqua_tutor.agent import RECORDING_TOOLS
from loqua_tutor.entrypoint import entrypoint, on_session_end, prewarm
from loqua_tutor.forkserver import start_forkserver_ignoring_sigterm
from loqua_tutor.metrics import JOB_METRIC_NAMES, JobMetrics, WorkerMetrics, worker_metrics
from loqua_tutor.multiproc import MultiprocStore, exposition_registry
from loqua_tutor.pipeline import check_providers, mode_description
from loqua_tutor.settings import TutorSettings

log = logging.getLogger(__name__)

COMPACT_INTERVAL_SECONDS = 60.0
# How long after the learner-facing session ends a job process may take to shut down (room
# disconnect, shutdown callbacks) before livekit-agents kills it.
SHUTDOWN_PROCESS_TIMEOUT = 15.0


@dataclass(frozen=True)
class CapacityGate:
    """The concurrency cap as pure arithmetic (unit-tested without a LiveKit server)."""

    max_sessions: int

    # See the module docstring: livekit-agents' threshold would reject concurrent requests.
    load_threshold: float = math.inf

    def load(self, running: int) -> float:
        return min(1.0, max(0, running) / self.max_sessions)

    def is_full(self, running: int) -> bool:
        return running >= self.max_sessions

    def admit(self, running: int, accepting: int, draining: bool) -> str | None:
        """``None`` to accept, else the rejection reason (a metric label)."""
        if draining:
            return "draining"
        if running + accepting >= self.max_sessions:
            return "capacity"
        return None


class _Load:
    """``load_fnc``: livekit-agents calls it with the server (one parameter) in a thread."""

    def __init__(self, gate: CapacityGate, metrics: WorkerMetrics) -> None:
        self._gate = gate
        self._metrics = metrics

    def __call__(self, server: AgentServer) -> float:
        running = len(server.active_jobs)
        self._metrics.worker_jobs.set(running)
        return self._gate.load(running)


class _Admission:
    """``request_fnc``: accept within the cap, reject (for another worker) beyond it."""

    def __init__(self, gate: CapacityGate, metrics: WorkerMetrics, settings: TutorSettings) -> None:
        self._gate = gate
        self._metrics = metrics
        self._settings = settings
        self._accepting = 0  # accepted but not yet running (waiting for LiveKit's assignment)
        self.server: AgentServer | None = None

    async def __call__(self, request: JobRequest) -> None:
        server = self.server
        running = len(server.active_jobs) if server is not None else 0
        draining = server.draining if server is not None else False
        reason = self._gate.admit(running, self._accepting, draining)
        if reason is not None:
            self._metrics.jobs_rejected.labels(reason).inc()
            log.info(
                "declining job %s for room %s: %s (%d/%d running)",
                request.id,
                request.room.name,
                reason,
                running,
                self._gate.max_sessions,
            )
            await request.reject(terminate=False)  # terminate=False: LiveKit may try another worker
            return
        self._accepting += 1
        try:
            self._metrics.jobs_accepted.inc()
            await request.accept(
                name="Loqua tutor",
                attributes={
                    "loqua.agent_id": self._settings.agent_id,
                    "loqua.tier": self._settings.tier.value,
                    "loqua.region": self._settings.region,
                },
            )
        finally:
            self._accepting -= 1


def build_server(settings: TutorSettings, metrics: WorkerMetrics) -> tuple[AgentServer, _Admission]:
    """The AgentServer with our options. Entrypoints are module-level functions bound with
    ``functools.partial`` so they pickle into job processes together with the settings."""
    gate = CapacityGate(settings.max_sessions)
    executor = JobExecutorType.PROCESS if settings.job_executor == "process" else JobExecutorType.THREAD
    server = AgentServer(
        job_executor_type=executor,
        load_threshold=gate.load_threshold,
        load_fnc=_Load(gate, metrics),
        drain_timeout=settings.drain_timeout_seconds,
        num_idle_processes=settings.idle_processes,
        shutdown_process_timeout=SHUTDOWN_PROCESS_TIMEOUT,
        session_end_timeout=settings.finalize_timeout_seconds + 5.0,
        permissions=WorkerPermissions(can_publish=settings.voice_enabled, can_subscribe=settings.voice_enabled),
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key.get_secret_value(),
        api_secret=settings.livekit_api_secret.get_secret_value(),
        host=settings.http_host,
        port=settings.health_port,
        # livekit-agents spells it WARN
        log_level="WARN" if settings.log_level == "WARNING" else settings.log_level,
        setup_fnc=prewarm,
    )
    admission = _Admission(gate, metrics, settings)
    server.rtc_session(
        functools.partial(entrypoint, settings),
        agent_name=settings.agent_name,
        on_request=admission,
        on_session_end=functools.partial(on_session_end, settings),
    )
    admission.server = server
    return server, admission


_default_metrics_dir: str | None = None


def _prepare_metrics_dir(settings: TutorSettings) -> MultiprocStore | None:
    global _default_metrics_dir
    if settings.job_executor != "process":
        return None
    if not settings.prometheus_multiproc_dir and _default_metrics_dir is None:
        # One directory per worker process, kept for its lifetime: job processes are forked from a
        # forkserver that keeps the environment of the first start (a second run_worker() in the
        # same process, as tests do, must find the same directory).
        _default_metrics_dir = tempfile.mkdtemp(prefix="loqua-tutor-metrics-")
        atexit.register(shutil.rmtree, _default_metrics_dir, True)
    path = settings.prometheus_multiproc_dir or _default_metrics_dir
    assert path is not None
    # Zero-valued twins of the job metrics, never updated: they stand in until a job reports.
    return MultiprocStore.prepare(path, JOB_METRIC_NAMES, zeros=_zero_job_metrics())


def _zero_job_metrics() -> CollectorRegistry:
    zeros = CollectorRegistry()
    JobMetrics(zeros).know_tools(RECORDING_TOOLS)
    return zeros


async def run_worker(
    settings: TutorSettings,
    *,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
    registry: CollectorRegistry = REGISTRY,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run the worker until SIGTERM/SIGINT (or ``stop`` is set); returns an exit code.

    For tests: pass ``stop`` and ``install_signal_handlers=False``; ``METRICS_PORT=0`` and
    ``HEALTH_PORT=0`` pick free ports, reported to ``on_ready({"metrics_port", "health_port",
    "worker_id"})`` once the worker is registered with LiveKit.
    """
    check_providers(settings)  # main thread, before any job process: livekit plugin rule
    stop = stop or asyncio.Event()
    force = asyncio.Event()
    metrics = worker_metrics(registry)
    metrics.worker_draining.set(0)
    gate = CapacityGate(settings.max_sessions)
    metrics.build_info.info(
        {
            "version": __version__,
            "region": settings.region,
            "tier": settings.tier.value,
            "agent_name": settings.agent_name or "(automatic)",
            "executor": settings.job_executor,
        }
    )
    metrics.worker_capacity.set(gate.max_sessions)
    if not settings.agent_name and os.environ.get("LIVEKIT_AGENT_NAME"):
        log.warning("LIVEKIT_AGENT_NAME is set; livekit-agents registers with it although AGENT_NAME is empty")
    store = _prepare_metrics_dir(settings)
    if install_signal_handlers and settings.job_executor == "process":
        # After the metrics directory is in the environment (the forkserver keeps the environment
        # of its start), before any thread exists and before our handlers: see loqua_tutor.forkserver.
        start_forkserver_ignoring_sigterm()
    server, _ = build_server(settings, metrics)
    registered = asyncio.Event()

    def health() -> tuple[bool, str]:
        if server.draining:
            return True, "draining"
        return (True, "ok") if registered.is_set() else (True, "starting")

    http = serve_http(
        settings.metrics_port,
        host=settings.http_host,
        registry=exposition_registry(registry, store),
        health=health,
    )
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("%s again: ending the remaining sessions now", signame)
            force.set()
        else:
            log.info("%s: draining (up to %ds)", signame, settings.drain_timeout_seconds)
            stop.set()

    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)

    @server.on("worker_registered")
    def _registered(worker_id: str, _info: Any) -> None:
        registered.set()
        log.info(
            "registered with LiveKit as %s: agent_name=%s (%s dispatch) tier=%s max_sessions=%d executor=%s",
            worker_id,
            settings.agent_name or "-",
            "explicit" if settings.agent_name else "automatic",
            settings.tier.value,
            gate.max_sessions,
            settings.job_executor,
        )
        if on_ready is not None:
            on_ready(
                {
                    "metrics_port": http.port,
                    "health_port": server.worker_info.http_port,
                    "worker_id": worker_id,
                }
            )

    log.info(
        "loqua-tutor %s starting: livekit=%s api=%s metrics=:%d health=:%d drain=%ds",
        __version__,
        settings.livekit_url,
        settings.api_base_url,
        http.port,
        settings.health_port,
        settings.drain_timeout_seconds,
    )
    log.info("%s", mode_description(settings))

    run_task = asyncio.create_task(server.run(devmode=False), name="agent-server")
    compact_task = asyncio.create_task(_compact_loop(store), name="metrics-compaction") if store else None
    stop_task = asyncio.create_task(stop.wait(), name="stop-signal")
    exit_code = 0
    try:
        done, _ = await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if run_task in done:
            exc = run_task.exception()
            if exc is not None:
                log.error("worker stopped: %s", exc)
                exit_code = 1
        else:
            await _drain(server, settings, metrics, force)
    finally:
        stop_task.cancel()
        with contextlib.suppress(Exception):
            await server.aclose()
        if not run_task.done():
            run_task.cancel()
        with contextlib.suppress(BaseException):
            await run_task
        if compact_task is not None:
            compact_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await compact_task
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        http.close()
        log.info("worker stopped")
        for handler in logging.getLogger().handlers:
            handler.flush()
    return exit_code


async def _drain(server: AgentServer, settings: TutorSettings, metrics: WorkerMetrics, force: asyncio.Event) -> None:
    metrics.worker_draining.set(1)
    started = time.monotonic()
    running = len(server.active_jobs)
    log.info("draining: %d session(s) running; no new jobs accepted", running)
    drain = asyncio.create_task(server.drain(timeout=settings.drain_timeout_seconds))
    forced = asyncio.create_task(force.wait())
    try:
        done, _ = await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        if drain in done:
            exc = drain.exception()
            if isinstance(exc, TimeoutError):
                log.warning(
                    "drain timeout (%ds) reached with %d session(s) still running; ending them",
                    settings.drain_timeout_seconds,
                    len(server.active_jobs),
                )
            elif exc is not None:
                log.warning("drain failed: %s", exc)
            else:
                log.info("drained in %.1fs", time.monotonic() - started)
    finally:
        for task in (drain, forced):
            task.cancel()
        with contextlib.suppress(BaseException):
            await drain


async def _compact_loop(store: MultiprocStore) -> None:
    while True:
        await asyncio.sleep(COMPACT_INTERVAL_SECONDS)
        try:
            await asyncio.to_thread(store.compact)
        except Exception:
            log.exception("metrics compaction failed")
