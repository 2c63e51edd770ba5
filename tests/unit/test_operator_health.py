"""Liveness that can fail: a blocked event loop or a silent watch stream fails /healthz."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest

from loqua_common.metrics import serve_http
from loqua_operator.health import Liveness, watch_hook


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stale_heartbeat_or_silent_stream_fails_with_the_reason() -> None:
    clock = Clock()
    live = Liveness(loop_stall_seconds=10, watch_stall_seconds=90, clock=clock)
    assert live.check() == (True, "ok")  # before the loop ever ran: starting, not dead
    live.beat()
    live.stream_alive("agentdispatches@lq-1")
    clock.now += 9
    assert live.check()[0]
    clock.now += 2
    ok, why = live.check()
    assert not ok and "event loop blocked for 11 s" in why
    live.beat()
    clock.now += 80
    live.beat()
    ok, why = live.check()
    assert not ok and why == "watch stream agentdispatches@lq-1 silent for 91 s"
    live.stream_ended("agentdispatches@lq-1")  # ended silent: kopf restarting it does not refresh it
    live.stream_started("agentdispatches@lq-1")
    assert not live.check()[0]
    live.stream_alive("agentdispatches@lq-1")
    clock.now += 1
    live.stream_ended("agentdispatches@lq-1")  # ended while talking (its namespace went away): forgotten
    clock.now += 500
    live.beat()
    assert live.check()[0]


def test_a_watch_that_never_started_fails_too() -> None:
    clock = Clock()
    live = Liveness(loop_stall_seconds=10, watch_stall_seconds=90, clock=clock)
    live.expect_streams()  # kopf started
    clock.now += 91
    live.beat()
    assert live.check() == (False, "no watch stream running for 91 s")
    live.stream_started("agentdispatches@*")
    assert live.check()[0]


def test_the_hook_sits_on_kopfs_watch_stream() -> None:
    """Fails when a kopf upgrade moves the stream generator the liveness stamp depends on."""
    from kopf._cogs.clients import watching

    live = Liveness(10, 90)
    original = watching.infinite_watch
    remove = watch_hook(live, "agentdispatches")
    try:
        assert watching.infinite_watch is not original and watching.infinite_watch.__wrapped__ is original
    finally:
        remove()
    assert watching.infinite_watch is original


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.timeout(60)
async def test_healthz_fails_while_the_event_loop_is_blocked() -> None:
    """The real HTTP endpoint (served from a thread) and a real event loop that a handler blocks."""
    live = Liveness(loop_stall_seconds=2, watch_stall_seconds=90)
    server = serve_http(0, host="127.0.0.1", health=live.check, ready=lambda: (True, "ok"))
    url = f"http://127.0.0.1:{server.port}/healthz"
    seen: list[tuple[int, str]] = []

    async def scenario() -> None:
        beat = asyncio.create_task(live.run_heartbeat())
        await asyncio.sleep(1.2)
        seen.append(await asyncio.to_thread(get, url))
        loop = asyncio.get_running_loop()
        blocked = loop.run_in_executor(None, lambda: (time.sleep(3.5), get(url))[1])
        time.sleep(4)  # a handler that blocks the loop (a sync call in async code)
        seen.append(await blocked)
        await asyncio.sleep(1.5)  # the loop runs again
        seen.append(await asyncio.to_thread(get, url))
        beat.cancel()

    try:
        await scenario()
    finally:
        server.close()
    assert seen[0][0] == 200
    assert seen[1][0] >= 500 and "event loop blocked" in seen[1][1]
    assert seen[2][0] == 200
