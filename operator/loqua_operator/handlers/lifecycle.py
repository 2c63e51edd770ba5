"""kopf wiring of the lifecycle: feed the object index, run the sweep, the room refreshes and webhooks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kopf
from livekit import api

from loqua_operator import events
from loqua_operator.context import OperatorContext
from loqua_operator.handlers import registry
from loqua_operator.kube import GROUP, PLURAL, VERSION
from loqua_operator.webhooks import WebhookServer, make_app


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def track(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # async: runs in the event loop, so index changes never interleave with a reader.
    ctx: OperatorContext = memo.ctx
    events.capture()  # kopf's Event poster, for the sweep and webhook refreshes (see events.py)
    ctx.index.observe(body, deleted=type == "DELETED")


@kopf.on.startup(registry=registry)
async def start_lifecycle(memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    memo.lifecycle_stop = asyncio.Event()
    ctx.refresh.start()
    memo.sweep_task = asyncio.create_task(ctx.sweeper.run(memo.lifecycle_stop), name="sweep")
    memo.webhook_server = None
    if ctx.settings.webhook_enabled:
        key = ctx.settings.livekit_api_key.get_secret_value()
        secret = ctx.settings.livekit_api_secret.get_secret_value()
        receiver = api.WebhookReceiver(api.TokenVerifier(key, secret))

        def verified() -> None:
            ctx.sweeper.last_webhook = time.monotonic()

        server = WebhookServer(
            make_app(receiver, ctx.metrics, ctx.refresh.schedule, verified),
            ctx.settings.webhook_port,
            host=ctx.settings.http_host,
        )
        try:
            await server.start()
        except OSError as exc:
            # A startup activity that fails permanently stops the operator: better than running blind.
            raise kopf.PermanentError(
                f"WEBHOOK_PORT {ctx.settings.webhook_port} cannot be served ({exc.strerror or exc}); "
                "choose a free port or set WEBHOOK_ENABLED=false"
            ) from None
        memo.webhook_server = server


@kopf.on.cleanup(registry=registry)
async def stop_lifecycle(memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    stop = getattr(memo, "lifecycle_stop", None)
    if stop is not None:
        stop.set()
        await asyncio.wait_for(memo.sweep_task, timeout=30)
    await ctx.refresh.stop()
    server = getattr(memo, "webhook_server", None)
    if server is not None:
        await server.stop()
