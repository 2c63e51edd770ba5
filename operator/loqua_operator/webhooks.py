"""LiveKit webhooks: verify the signature, then refresh the affected room at once.

livekit-server signs each POST with a JWT (``Authorization``) carrying the body's SHA-256;
``livekit.api.WebhookReceiver`` checks both. Anything that does not verify is refused with 401 and
counted; nothing in it is acted on or logged beyond the event type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from livekit import api

from loqua_operator.metrics import OperatorMetrics

log = logging.getLogger("loqua_operator.webhooks")
PATH = "/webhooks/livekit"
ROOM_EVENTS = {"participant_joined", "participant_left", "participant_connection_aborted", "room_started"}
MAX_BODY = 1 << 20


def make_app(
    receiver: api.WebhookReceiver,
    metrics: OperatorMetrics,
    on_room_event: Callable[[str, bool], None],
    on_verified: Callable[[], None],
) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        try:
            event = receiver.receive(body, auth)
        except Exception:  # bad signature, wrong key, hash mismatch, malformed body: all the same
            metrics.webhook_events.labels("unknown", "rejected").inc()
            log.warning("refused a LiveKit webhook whose signature does not verify")
            return web.json_response({"error": "signature does not verify"}, status=401)
        on_verified()
        room = event.room.name
        if event.event == "room_finished" and room:
            metrics.webhook_events.labels(event.event, "accepted").inc()
            on_room_event(room, True)
        elif event.event in ROOM_EVENTS and room:
            metrics.webhook_events.labels(event.event, "accepted").inc()
            on_room_event(room, False)
        else:
            metrics.webhook_events.labels(event.event or "unknown", "ignored").inc()
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(PATH, handle)
    return app


class WebhookServer:
    def __init__(self, app: web.Application, port: int, host: str = "0.0.0.0") -> None:
        self._app = app
        self._port = port
        self._host = host
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # the bound port when 0 was asked
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("LiveKit webhooks on :%d%s", self.port, PATH)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
