"""Liveness that can fail: the event loop must keep ticking and the watch streams must keep talking.

``/healthz`` is served from a thread (it shares the metrics port), so it must not answer "ok" just
because the thread runs — the model is kopf's own liveness endpoint, which is served from the event
loop and so cannot answer while the loop hangs. Here a task in the loop stamps a heartbeat every
second; a stale heartbeat (the loop blocked or starved) fails liveness. Every event that reaches the
operator from a watch stream — including the API server's periodic BOOKMARKs — stamps that stream;
a stream silent beyond the bound (the API server unreachable, the watch wedged) fails liveness, so
the kubelet restarts the pod instead of leaving an operator that no longer sees changes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

LOOP_TICK = 1.0


class Liveness:
    def __init__(
        self,
        loop_stall_seconds: float,
        watch_stall_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop_stall_seconds = loop_stall_seconds
        self.watch_stall_seconds = watch_stall_seconds
        self._clock = clock
        self._beat: float | None = None
        self._streams: dict[str, float] = {}
        self._expect_since: float | None = None  # when kopf started: from then on a stream must exist

    def expect_streams(self) -> None:
        self._expect_since = self._clock()

    # ---- stamps (from the event loop) --------------------------------------------------------------
    def beat(self) -> None:
        self._beat = self._clock()

    def stream_started(self, name: str) -> None:
        """A (re)started stream is not news: kopf restarts a stream that fails, and a restart loop
        against an unreachable API server must not look alive. Only a new stream starts stamped."""
        self._streams.setdefault(name, self._clock())

    def stream_alive(self, name: str) -> None:
        self._streams[name] = self._clock()

    def stream_ended(self, name: str) -> None:
        """A stream that ends while it was talking (its namespace went away) is forgotten; one that ends
        silent keeps its stale stamp, whether kopf restarts it or not."""
        last = self._streams.get(name)
        if last is not None and self._clock() - last < self.watch_stall_seconds / 2:
            del self._streams[name]

    async def run_heartbeat(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(LOOP_TICK)

    # ---- verdict (from any thread) -----------------------------------------------------------------
    def check(self) -> tuple[bool, str]:
        now = self._clock()
        if self._beat is not None and now - self._beat > self.loop_stall_seconds:
            return False, f"event loop blocked for {now - self._beat:.0f} s"
        for name, last in list(self._streams.items()):
            if now - last > self.watch_stall_seconds:
                return False, f"watch stream {name} silent for {now - last:.0f} s"
        if not self._streams and self._expect_since is not None and now - self._expect_since > self.watch_stall_seconds:
            return False, f"no watch stream running for {now - self._expect_since:.0f} s"
        return True, "ok"


def watch_hook(liveness: Liveness, plural: str) -> Callable[[], None]:
    """Stamp ``liveness`` on every raw event of kopf's watch streams of ``plural`` (bookmarks included).

    kopf drops BOOKMARK events before any handler sees them, so the stamp sits on kopf's stream
    generator (``kopf._cogs.clients.watching.infinite_watch``, pinned kopf version; a unit test fails if
    the name moves). Only our resource's streams count: kube-apiserver sends their bookmarks about every
    minute, while kopf's own streams of CRDs and namespaces can stay silent for minutes when healthy.
    Returns a function that removes the hook.
    """
    from kopf._cogs.clients import watching

    original = watching.infinite_watch

    @functools.wraps(original)
    async def stamped(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        resource = kwargs.get("resource")
        if getattr(resource, "plural", None) != plural:
            async for event in original(*args, **kwargs):
                yield event
            return
        name = f"{plural}@{kwargs.get('namespace') or '*'}"
        liveness.stream_started(name)
        try:
            async for event in original(*args, **kwargs):
                liveness.stream_alive(name)
                yield event
        finally:
            liveness.stream_ended(name)

    watching.infinite_watch = stamped

    def remove() -> None:
        watching.infinite_watch = original

    return remove
