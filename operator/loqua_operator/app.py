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
from loqua_operator import __version__
from loqua_operator.context import OperatorContext
from loqua_operator.dispatcher import Dispatcher
from loqua_operator.handlers import dispatch as _dispatch_handlers  # noqa: F401 (registers handlers)
from loqua_operator.handlers import lifecycle as _lifecycle_handlers  # noqa: F401 (registers handlers)
from loqua_operator.handlers import registry
from loqua_operator.kube import Kube, load_config
from loqua_operator.leader import LeaderElector
from loqua_operator.livekit_gateway import LiveKitGateway
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.settings import OperatorSettings
from loqua_operator.tracker import LifecycleTracker

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
    kube = Kube(namespaces)
    identity = settings.pod_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    elector: LeaderElector | None = None
    ready = asyncio.Event()

    def health() -> tuple[bool, str]:
        # Liveness: a standby is healthy; it just does not act.
        if elector is not None and not elector.is_leader:
            return True, "standby"
        return (True, "ok") if ready.is_set() else (True, "starting")

    def readiness() -> tuple[bool, str]:
        # Readiness gates the Service (webhooks): only the leader, once kopf runs, takes traffic.
        if elector is not None and not elector.is_leader:
            return False, "standby"
        return (True, "ok") if ready.is_set() else (False, "starting")

    server = serve_http(settings.metrics_port, health=health, ready=readiness)
    log.info(
        "operator %s starting: identity=%s namespaces=%s metrics=:%d livekit=%s",
        __version__,
        identity,
        ",".join(namespaces) or "(all)",
        server.port,
        settings.livekit_url,
    )
    gateway = LiveKitGateway(settings, metrics)
    try:
        if settings.leader_election:
            namespace = (
                settings.lease_namespace or settings.pod_namespace or (namespaces[0] if namespaces else "default")
            )
            elector = LeaderElector(kube, namespace, settings.lease_name, identity)
            await elector.acquire()
        metrics.is_leader.set(1)  # this replica acts from here on (the only one, without leader election)
        await gateway.start()
        dispatcher = Dispatcher(gateway, metrics, settings)
        tracker = LifecycleTracker(settings, gateway, dispatcher, kube, metrics)
        ctx = OperatorContext(settings, metrics, gateway, dispatcher, kube, tracker)
        stop_flag: asyncio.Event = asyncio.Event()
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
        watchers = [operator_task]
        if elector is not None:
            watchers.append(asyncio.create_task(elector.keep(), name="lease"))
        done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        if operator_task not in done:  # leadership lost: stop acting at once
            metrics.is_leader.set(0)
            stop_flag.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(operator_task, timeout=30)
            return 1
        for task in watchers:
            task.cancel()
        operator_task.result()
        return 0
    finally:
        await gateway.close()
        server.close()
