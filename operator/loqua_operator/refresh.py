"""The per-room refresh queue: webhooks name a room; a few workers refresh each named room once.

A burst of events for one room while it waits becomes one refresh; a room named again while it is
being refreshed is refreshed once more afterwards (the later event may carry news).
"""

from __future__ import annotations

import asyncio
import logging
import time

from loqua_operator.index import ObjectIndex
from loqua_operator.leader import NotLeader
from loqua_operator.lifecycle import RoomView
from loqua_operator.livekit_gateway import LiveKitError
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.reconciler import Reconciler
from loqua_operator.rooms import RoomObserver

log = logging.getLogger("loqua_operator.lifecycle")
WORKERS = 4


class RoomRefreshQueue:
    def __init__(
        self, index: ObjectIndex, rooms: RoomObserver, reconciler: Reconciler, metrics: OperatorMetrics
    ) -> None:
        self._index = index
        self._rooms = rooms
        self._reconciler = reconciler
        self._metrics = metrics
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: dict[str, bool] = {}  # room -> gone (room_finished)
        self._busy: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        # Started from a kopf startup handler: the workers inherit kopf's context (kopf.event works).
        self._workers = [asyncio.create_task(self._work(), name=f"room-refresh-{i}") for i in range(WORKERS)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def schedule(self, room: str, gone: bool = False) -> None:
        if not self._index.in_room(room):
            return
        queued = room in self._pending
        self._pending[room] = gone if not queued else self._pending[room] and gone
        if not queued:
            self._queue.put_nowait(room)

    async def _work(self) -> None:
        while True:
            room = await self._queue.get()
            if room in self._busy:  # another worker has it: requeue after it
                await asyncio.sleep(0.05)
                self._queue.put_nowait(room)
                continue
            gone = self._pending.pop(room, False)
            self._busy.add(room)
            try:
                await self.refresh(room, gone)
            finally:
                self._busy.discard(room)

    async def refresh(self, room: str, gone: bool = False) -> None:
        objects = self._index.in_room(room)
        if not objects:
            return
        try:
            view = RoomView(exists=False, seen=time.monotonic()) if gone else await self._rooms.room(room)
        except LiveKitError as exc:
            self._metrics.sweep_errors.inc()
            log.warning("room refresh failed: %s", exc, extra={"fields": {"room": room}})
            return
        for obj in objects:
            try:
                await self._reconciler.step(obj.ref, view, "webhook")
            except (LiveKitError, NotLeader, Exception) as exc:  # one object's failure must not stop the others
                self._metrics.sweep_errors.inc()
                log.warning(
                    "lifecycle update failed: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"fields": {"room": room, "name": obj.name}},
                )
