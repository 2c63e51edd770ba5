"""Kubernetes calls: a call queued past its deadline is never sent; a write asks the gate in the thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from loqua_operator.kube import CrdNotServed, Kube
from loqua_operator.leader import NotLeader, WriteGate


async def test_a_call_that_waited_for_a_thread_past_its_deadline_is_not_sent() -> None:
    kube = Kube([], WriteGate(elected=False))
    kube._pool = ThreadPoolExecutor(1)  # one thread, kept busy
    sent = threading.Event()
    loop = asyncio.get_running_loop()
    busy = loop.run_in_executor(kube._pool, time.sleep, 1.0)
    with pytest.raises(TimeoutError):
        await kube._run(lambda **_: sent.set(), 0.2)
    await busy
    await asyncio.sleep(0.1)
    assert not sent.is_set(), "a call the caller gave up on went out later"
    kube.close()


async def test_a_write_is_refused_in_the_thread_once_leadership_lapsed() -> None:
    clock = [100.0]
    gate = WriteGate(elected=True, clock=lambda: clock[0])
    gate.confirm(100.0)
    kube = Kube([], gate)
    sent = threading.Event()

    def lapse_then_write(**_: object) -> None:
        sent.set()

    clock[0] = 111.0  # after the caller passed the gate, before the thread runs the call
    with pytest.raises(NotLeader):
        await kube._run(lapse_then_write, 1.0, write="status of ns/a")
    assert not sent.is_set()
    kube.close()


async def test_waiting_for_the_crd_returns_once_discovery_lists_it_and_says_what_to_do_when_it_never_does() -> None:
    kube = Kube([], WriteGate(elected=False))
    answers = iter([ConnectionRefusedError(), False, True])

    async def serves() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    kube.serves_agent_dispatches = serves  # type: ignore[method-assign]
    await kube.wait_until_served(timeout=5, poll=0.01)  # refused, not listed, listed

    async def refused() -> bool:
        raise ConnectionRefusedError()

    kube.serves_agent_dispatches = refused  # type: ignore[method-assign]
    with pytest.raises(CrdNotServed) as err:
        await kube.wait_until_served(timeout=0.05, poll=0.01)
    message = str(err.value)
    assert "agentdispatches.agents.loqua.app v1alpha1 is not served after 0 s" in message
    assert "API discovery failed: ConnectionRefusedError" in message
    assert "install the CRDs first" in message and "kubectl apply -f deploy/crds/" in message
    kube.close()


async def test_a_call_queued_behind_busy_threads_gets_its_whole_deadline_once_a_thread_is_free() -> None:
    """A burst: more calls than threads. Waiting for a thread is backpressure, not part of the deadline
    (before, a 9,000-object burst lost ~11 % of its binds, unsent, to the queue)."""
    kube = Kube([], WriteGate(elected=False))
    kube._pool = ThreadPoolExecutor(1)
    kube._slots = asyncio.Semaphore(1)
    slow = asyncio.create_task(kube._run(lambda **_: time.sleep(0.5) or "slow", 2.0))
    await asyncio.sleep(0.05)
    queued = await kube._run(lambda **_: "sent", 0.3)  # waits ~0.45 s for the thread, then has 0.3 s
    assert (queued, await slow) == ("sent", "slow")
    kube.close()
