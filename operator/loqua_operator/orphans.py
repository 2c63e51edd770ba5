"""The orphan sweeper: dispatches of managed agent names that no object references.

A dispatch must be ``ORPHAN_GRACE_SECONDS`` old before it is removed, so each unreferenced room needs
a look only once per grace period; at most ``ORPHAN_ROOMS_PER_SWEEP`` rooms are looked at per sweep
(least recently checked first), a few at a time: calls and time stay bounded. Right before a
deletion the live index is asked again, so an object created since the sweep began is never robbed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable

from loqua_operator import lifecycle
from loqua_operator.dispatcher import Dispatcher
from loqua_operator.leader import NotLeader
from loqua_operator.livekit_gateway import LiveKitError, LiveKitGateway
from loqua_operator.metrics import OperatorMetrics
from loqua_operator.model import DispatchKey, ObservedDispatch
from loqua_operator.settings import OperatorSettings

log = logging.getLogger("loqua_operator.lifecycle")
ORPHAN_CHECK_CONCURRENCY = 8


class OrphanSweeper:
    def __init__(
        self,
        settings: OperatorSettings,
        gateway: LiveKitGateway,
        dispatcher: Dispatcher,
        metrics: OperatorMetrics,
        referenced_now: Callable[[], set[DispatchKey]],
    ) -> None:
        self.settings = settings
        self._gw = gateway
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._referenced_now = referenced_now
        self._checked: dict[str, float] = {}  # room -> monotonic time of its last orphan check

    async def sweep(self, rooms: Iterable[str], referenced: set[DispatchKey]) -> tuple[int, int]:
        """Look at due unreferenced rooms; returns (orphans removed, errors)."""
        rooms = set(rooms)
        managed = set(self.settings.managed_agent_names) or {k.agent_name for k in referenced}
        if not managed:
            return 0, 0
        referenced_rooms = {k.room for k in referenced}
        now = dt.datetime.now(dt.UTC)
        clock = time.monotonic()
        recheck = max(self.settings.orphan_grace_seconds, self.settings.cleanup_interval_seconds)
        self._checked = {r: t for r, t in self._checked.items() if r in rooms}
        due = [n for n in rooms if n not in referenced_rooms and clock - self._checked.get(n, -recheck) >= recheck]
        due.sort(key=lambda name: self._checked.get(name, float("-inf")))
        due = due[: self.settings.orphan_rooms_per_sweep]
        for name in due:
            self._checked[name] = clock
        limit = asyncio.Semaphore(ORPHAN_CHECK_CONCURRENCY)
        removed = errors = 0

        async def check(name: str) -> None:
            nonlocal removed, errors
            async with limit:
                try:
                    dispatches = await self._dispatcher.observe(name)
                except LiveKitError as exc:
                    # livekit-server keeps listing a room for a while after no node hosts it any more
                    # (no participant, no dispatch) and answers ListDispatch for it only with a timeout.
                    log.debug("ListDispatch gave no answer for room %s: %s", name, exc.code)
                    return
                for orphan in lifecycle.orphans(
                    name, dispatches, referenced, managed, now, self.settings.orphan_grace_seconds
                ):
                    if DispatchKey(name, orphan.agent_name) in self._referenced_now():
                        continue  # an object for it appeared since the sweep began
                    ok = await self._remove(name, orphan)
                    removed += ok is True
                    errors += ok is None

        await asyncio.gather(*(check(name) for name in due))
        return removed, errors

    async def _remove(self, room: str, orphan: ObservedDispatch) -> bool | None:
        self._metrics.orphans_found.inc()
        try:
            if await self._dispatcher.delete_unreferenced(room, orphan):
                self._metrics.orphans_removed.inc()
                self._metrics.dispatches_deleted.labels("orphan").inc()
                log.info(
                    "removed orphan dispatch",
                    extra={"fields": {"room": room, "agent": orphan.agent_name, "dispatch_id": orphan.id}},
                )
                return True
            return False
        except (LiveKitError, NotLeader) as exc:
            self._metrics.sweep_errors.inc()
            log.warning("could not delete orphan: %s", exc, extra={"fields": {"dispatch_id": orphan.id}})
            return None
