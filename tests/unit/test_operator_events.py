"""Events go through kopf's poster from any task once a handler captured it."""

from __future__ import annotations

import asyncio
import contextvars

import kopf
from kopf._core.engines import posting

from loqua_operator import events


async def test_an_event_from_a_background_task_reaches_kopfs_queue() -> None:
    async def scenario() -> list:
        queue: asyncio.Queue = asyncio.Queue()
        posting.settings_var.set(kopf.OperatorSettings())  # set operator-wide by kopf.operator()

        def in_handler() -> None:  # what kopf sets up for a per-object handler task
            posting.event_queue_loop_var.set(asyncio.get_running_loop())
            posting.event_queue_var.set(queue)
            events.capture()

        contextvars.copy_context().run(in_handler)
        body = {
            "apiVersion": "agents.loqua.app/v1alpha1",
            "kind": "AgentDispatch",
            "metadata": {"namespace": "ns", "name": "a", "uid": "u"},
        }
        await asyncio.create_task(asyncio.to_thread(lambda: None))  # a task of our own, no kopf context
        await asyncio.create_task(_post(body))
        return [queue.get_nowait() for _ in range(queue.qsize())]

    async def _post(body: dict) -> None:
        events.post(body, "Normal", "RoomReopened", "room r was closed and reopened")

    got = await asyncio.create_task(scenario())
    assert [(e.type, e.reason) for e in got] == [("Normal", "RoomReopened")]
    assert got[0].ref["name"] == "a"
