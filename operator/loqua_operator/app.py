"""Wire the operator together and run it: logging, metrics, leader Lease, LiveKit, kopf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import kopf

from loqua_common.logging import configure_logging, register_secret
from loqua_common.metrics import serve_http
from loqua_operator import __version__, workers
from loqua_operator.context import OperatorContext
from loqua_operator.dispatcher import Dispatcher
from loqua_operator.handlers import dispatch as _dispatch_handlers  # noqa: F401 (registers handlers)
from loqua_operator.handlers import lifecycle as _lifecycle_handlers  # noqa: F401 (registers handlers)
from loqua_operator.handlers import registry
from loqua_operator.health import Liveness, watch_hook
from loqua_operator.index import ObjectIndex
from loqua_operator.kube import PLURAL, CrdNotServed, Kube, load_config
from loqua_operator.leader import LeaderElector, WriteGate
from loqua_operator.livekit_gateway import LiveKitGateway
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.orphans import OrphanSweeper
from loqua_operator.reconciler import Reconciler
from loqua_operator.refresh import RoomRefreshQueue
from loqua_operator.rooms import RoomObserver
from loqua_operator.settings import OperatorSettings
from loqua_operator.sweep import Sweeper

log = logging.getLogger("loqua_operator")


def setup_logging(settings: OperatorSettings) -> None:
    configure_logging(
        component="operator",
        agent_id="loqua-operator",
        fmt=settings.log_format,
        rate_limit=settings.log_rate_limit,
        level=settings.log_level,
    )
    register_secret(settings.livekit_api_secret.get_secret_value())
    register_secret(settings.livekit_api_key.get_secret_value())


async def run(settings: OperatorSettings, namespaces: list[str]) -> int:
    """Run until stopped (SIGTERM/SIGINT) or until leadership is lost (exit code 1)."""
    metrics = OperatorMetrics()
    metrics.info.info({"version": __version__, "region": settings.region})
    load_config()
    gate = WriteGate(elected=settings.leader_election)
    kube = Kube(namespaces, gate)
    identity = settings.pod_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    elector: LeaderElector | None = None
    ready = asyncio.Event()
    liveness = Liveness(settings.liveness_loop_stall_seconds, settings.liveness_watch_stall_seconds)
    heartbeat = asyncio.create_task(liveness.run_heartbeat(), name="heartbeat")
    remove_hook = watch_hook(liveness, PLURAL)
    metrics.is_leader.set_function(lambda: 1.0 if gate.is_open() else 0.0)
    scaler: asyncio.Task[None] | None = None
    scaler_client: workers.WorkerClient | None = None

    def health() -> tuple[bool, str]:
        # Liveness can fail: a blocked event loop or a silent watch stream (see health.py). A standby
        # whose loop runs is healthy; it just does not act.
        ok, why = liveness.check()
        if not ok:
            return False, why
        if settings.leader_election and not gate.is_open():
            return True, "standby"
        return (True, "ok") if ready.is_set() else (True, "starting")

    def readiness() -> tuple[bool, str]:
        # Readiness gates the Service (webhooks): only the leader, once kopf runs, takes traffic. It
        # turns false the moment leadership is no longer confirmed (the gate closes by itself).
        if settings.leader_election and not gate.is_open():
            return False, "standby"
        return (True, "ok") if ready.is_set() else (False, "starting")

    server = serve_http(settings.metrics_port, host=settings.http_host, health=health, ready=readiness)
    log.info(
        "operator %s starting: identity=%s namespaces=%s metrics=:%d livekit=%s",
        __version__,
        identity,
        ",".join(namespaces) or "(all)",
        server.port,
        settings.livekit_url,
    )
    gateway = LiveKitGateway(settings, metrics, gate)
    try:
        try:
            await kube.wait_until_served(settings.crd_wait_seconds)
        except CrdNotServed as exc:
            log.error("%s", exc)
            return 2
        if settings.leader_election:
            namespace = (
                settings.lease_namespace or settings.pod_namespace or (namespaces[0] if namespaces else "default")
            )
            elector = LeaderElector(kube, gate, namespace, settings.lease_name, identity)
            await elector.acquire()
        await gateway.start()
        dispatcher = Dispatcher(gateway, metrics, settings)

        def on_change(ref, obj) -> None:  # type: ignore[no-untyped-def]
            if obj is None:
                metrics.phases.forget(*ref)
                reconciler.forget(ref)
            elif obj.status.get("phase"):
                metrics.phases.set(ref.namespace, ref.name, obj.status["phase"])

        index = ObjectIndex(settings.agent_ttl_seconds, on_change)
        rooms = RoomObserver(gateway)
        reconciler = Reconciler(settings, dispatcher, kube, index, rooms, metrics)
        orphans = OrphanSweeper(settings, gateway, dispatcher, metrics, index.keys)
        sweeper = Sweeper(settings, index, kube, rooms, reconciler, orphans, metrics)
        refresh = RoomRefreshQueue(index, rooms, reconciler, metrics)
        ctx = OperatorContext(settings, metrics, index, reconciler, sweeper, refresh, liveness)
        stop_flag: asyncio.Event = asyncio.Event()
        liveness.expect_streams()
        operator_task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                clusterwide=not namespaces,
                namespaces=namespaces,
                memo=kopf.Memo(ctx=ctx),
                standalone=True,
                stop_flag=stop_flag,
                ready_flag=ready,
            ),
            name="kopf",
        )
        # Demand scaling acts only while this replica leads: every write asks the leader's write gate.
        scaler, scaler_client = workers.start(settings, metrics, index.snapshot, gate.check, index.synced)
        watchers = [operator_task]
        if elector is not None:
            watchers.append(asyncio.create_task(elector.keep(), name="lease"))
        done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        if operator_task not in done:  # leadership lost: the gate is already closed; stop acting, exit
            stop_flag.set()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(operator_task, timeout=5)
            return 1
        for task in watchers:
            task.cancel()
        if elector is not None:
            await elector.release()
        operator_task.result()
        return 0
    finally:
        gate.revoke()
        remove_hook()
        heartbeat.cancel()
        if scaler is not None:
            scaler.cancel()
        if scaler_client is not None:
            await scaler_client.close()
        await gateway.close()
        kube.close()
        server.close()
