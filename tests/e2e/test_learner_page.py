"""The learner page in a real browser: Debian's headless Chromium driven by Playwright, a fake
microphone, the stack's reference API (/rooms/join with its own ServiceAccount), an operator for
the API's namespace, and a real tutor worker. What a learner sees, and what Kubernetes and LiveKit
hold, through a first load, 10 reloads, a network cut and a closed tab.

The tests follow one learner (join → reloads → network cut → tab closed); each step brings the
page to the state it needs, so any test also runs alone (``-k``). Screenshots and the measured
figures are written next to the test logs (.devstack/logs/tests/).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import api
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from loqua_devstack import browser as browser_
from loqua_devstack.learner import page_url, sign_in_token
from loqua_devstack.loqua_api.dispatches import dispatch_name
from loqua_devstack.services import ServiceProcess, kubectl
from tests.conftest import LEARNERS_TTL_SECONDS
from tests.e2e.conftest import loqua_dev, until
from tests.integration.conftest import live_dispatches

pytestmark = pytest.mark.e2e

RELOADS = 10
RAPID_RELOADS = 10  # back to back, without waiting for the tutor in between
OFFLINE_SECONDS = 5
PAGE_TIMEOUT = 45.0  # generous for a loaded 2-core box; every wait returns as soon as it can


@pytest.fixture(scope="module")
async def browser(logs_dir: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await browser_.launch(pw)
        yield b
        await b.close()


@dataclass
class Lesson:
    """One learner on the page, and what the page showed so far."""

    env: dict[str, str]
    browser: Browser
    logs_dir: Path
    agent_name: str
    user_id: str
    room: str
    url: str
    console: list[str] = field(default_factory=list)
    context: BrowserContext | None = None
    page: Page | None = None
    agent_identity: str | None = None
    session_id: str | None = None
    closed: bool = False

    async def state(self) -> dict[str, Any]:
        assert self.page is not None
        return await browser_.page_state(self.page)

    async def wait_tutor(self) -> dict[str, Any]:
        """The page shows the tutor present with an active session; returns the page's state."""
        assert self.page is not None
        return await browser_.wait_tutor(self.page, PAGE_TIMEOUT)

    async def open(self) -> dict[str, Any]:
        """First visit: a new tab, the sign-in link, the tutor joins."""
        if self.page is not None:
            return await self.state()
        assert not self.closed, "the tab was closed for good"
        self.context = await self.browser.new_context()
        self.page = await self.context.new_page()
        self.page.on("console", lambda m: self.console.append(m.text))
        await self.page.goto(self.url)
        st = await self.wait_tutor()
        self.agent_identity, self.session_id = st["agentIdentity"], st["sessionId"]
        return st

    async def close(self) -> None:
        """Close the tab and end the lesson: delete the room's object (the operator ends the dispatch)."""
        if self.context is not None:
            await self.context.close()
            self.context, self.page = None, None
        kubectl(
            self.env,
            "delete",
            "ad",
            "-n",
            self.env["DISPATCH_NAMESPACE"],
            dispatch_name(self.room, self.agent_name),
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )

    async def screenshot(self, name: str) -> Path:
        assert self.page is not None
        path = self.logs_dir / f"learner-page-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def objects(self) -> list[dict[str, Any]]:
        out = kubectl(
            self.env,
            "get",
            "ad",
            "-n",
            self.env["DISPATCH_NAMESPACE"],
            "-o",
            "json",
            f"--field-selector=spec.room={self.room}",
        )
        return list(json.loads(out)["items"])

    async def participants(self) -> list[api.ParticipantInfo]:
        async with api.LiveKitAPI(
            self.env["LIVEKIT_URL"], self.env["LIVEKIT_API_KEY"], self.env["LIVEKIT_API_SECRET"]
        ) as lk:
            try:
                return list((await lk.room.list_participants(api.ListParticipantsRequest(room=self.room))).participants)
            except api.TwirpError as exc:
                if exc.code != "not_found":
                    raise
                return []

    async def livekit(self) -> tuple[list[api.AgentDispatch], list[api.ParticipantInfo]]:
        """The room's dispatches of our agent name and its agent participants, from livekit-server."""
        async with api.LiveKitAPI(
            self.env["LIVEKIT_URL"], self.env["LIVEKIT_API_KEY"], self.env["LIVEKIT_API_SECRET"]
        ) as lk:
            dispatches = await live_dispatches(lk, self.room, self.agent_name)
        people = await self.participants()
        return dispatches, [p for p in people if p.kind == api.ParticipantInfo.Kind.AGENT]

    async def assert_one_of_each(self) -> str:
        """One AgentDispatch, one LiveKit dispatch, one agent in the room — the one the page shows."""
        objs = await self.objects()
        assert [o["metadata"]["name"] for o in objs] == [dispatch_name(self.room, self.agent_name)]
        dispatches, agents = await self.livekit()
        assert len(dispatches) == 1, [d.id for d in dispatches]
        assert [a.identity for a in agents] == [self.agent_identity]
        assert objs[0]["status"]["dispatchId"] == dispatches[0].id
        return dispatches[0].id

    async def records(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.env["LOQUA_API_URL"], timeout=15) as http:
            resp = await http.get(
                f"/admin/users/{self.user_id}/records",
                headers={"Authorization": f"Bearer {self.env['LOQUA_ADMIN_TOKEN']}"},
            )
        resp.raise_for_status()
        return dict(resp.json())


def write_figures(logs_dir: Path, into: dict[str, Any], **figures: Any) -> None:
    """Measured figures for the notes: kept for the run's one-line summary (tests/e2e/conftest.py)
    and merged into one JSON file next to the logs."""
    into.update(figures)
    path = logs_dir / "learner-page-figures.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**current, **figures}, indent=2))


@pytest.fixture(scope="module")
async def lesson(
    stack_env: dict[str, str],
    browser: Browser,
    logs_dir: Path,
    learners_operator: ServiceProcess,
    tutor_worker: ServiceProcess,
    tutor_agent_name: str,
) -> AsyncIterator[Lesson]:
    # The signed-in link as a person gets it: `loqua-dev web` makes the learner and prints the address.
    room = f"page-{uuid.uuid4().hex[:8]}"
    done = loqua_dev(stack_env, "web", "--room", room, "--agent", tutor_agent_name, "--name", "Ana Browser")
    assert done.returncode == 0, done.stdout + done.stderr
    head, url = done.stdout.strip().splitlines()
    user_id = head.removeprefix("learner ").split(",")[0]
    assert head == f"learner {user_id}, room {room}, agent {tutor_agent_name}; open (signed in):", head
    assert url.startswith(f"{stack_env['LOQUA_WEB_URL']}?") and "#token=" in url, url
    ls = Lesson(stack_env, browser, logs_dir, tutor_agent_name, user_id, room, url)
    try:
        yield ls
    finally:
        (logs_dir / f"learner-page-console-{room}.log").write_text("\n".join(ls.console))
        # A step that failed halfway may leave the object: remove it (the operator ends the dispatch).
        await ls.close()


async def test_make_up_prints_the_page_address_and_it_serves_the_page(stack_env: dict[str, str]) -> None:
    """`make up` (`loqua-dev up`; here on the running stack, which it reuses) prints the page's
    address, and the API serves the built page (index.html and its bundle) there."""
    done = loqua_dev(stack_env, "up")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("learner page: ")]
    assert lines == [f"learner page: {stack_env['LOQUA_WEB_URL']}  (a signed-in link: .venv/bin/loqua-dev web)"]
    async with httpx.AsyncClient(timeout=15) as http:
        index = await http.get(stack_env["LOQUA_WEB_URL"])
        bundle = await http.get(f"{stack_env['LOQUA_WEB_URL']}assets/learner.js")
    assert index.status_code == 200 and 'src="assets/learner.js"' in index.text
    assert bundle.status_code == 200 and "javascript" in bundle.headers["Content-Type"]
    assert "livekit" in bundle.text.lower() and len(bundle.content) > 100_000


async def test_page_joins_and_the_tutor_joins(lesson: Lesson, learner_figures: dict[str, Any]) -> None:
    started = time.monotonic()
    st = await lesson.open()
    assert st["dispatch"]["reused"] is False and st["dispatch"]["phase"] in ("Dispatched", "Active")
    assert st["joins"] == 1 and st["sessionId"].startswith("sess_")
    dispatch_id = await lesson.assert_one_of_each()
    assert st["dispatch"]["dispatchId"] == dispatch_id
    # What the learner sees, in the page itself.
    assert lesson.page is not None
    assert await lesson.page.get_attribute("#agent", "data-present") == "true"
    assert await lesson.page.get_attribute("#connection", "data-state") == "connected"
    assert lesson.session_id in (await lesson.page.inner_text("#session"))

    # The learner publishes audio: the browser's fake microphone, as a real mic track in the room.
    async def microphone() -> list[api.TrackInfo]:
        mine = [p for p in await lesson.participants() if p.identity.startswith(f"learner-{lesson.user_id}-")]
        assert len(mine) <= 1, [p.identity for p in mine]
        return [t for p in mine for t in p.tracks if t.source == api.TrackSource.MICROPHONE]

    mics = await until(microphone, "the page's microphone track in the room", PAGE_TIMEOUT)
    assert [t.type for t in mics] == [api.TrackType.AUDIO]
    shot = await lesson.screenshot("agent-present")
    assert shot.stat().st_size > 10_000
    write_figures(
        lesson.logs_dir,
        learner_figures,
        first_load_agent_present_ms=st["agentPresentAtMs"],
        first_load_wall_s=round(time.monotonic() - started, 2),
        screenshot=str(shot),
    )
    # The token never reached a server log or stayed in the address bar.
    assert "#token=" not in lesson.page.url
    api_log = (Path(lesson.env["DEVSTACK_DIR"]) / "logs" / "loqua-api.log").read_text()
    assert lesson.url.split("#token=")[1] not in api_log


async def test_ten_reloads_keep_one_dispatch_one_agent_one_session(
    lesson: Lesson, learner_figures: dict[str, Any]
) -> None:
    await lesson.open()
    assert lesson.page is not None
    before = await lesson.assert_one_of_each()
    present_ms: list[int] = []
    for i in range(RELOADS):
        await lesson.page.reload()
        st = await lesson.wait_tutor()
        assert st["dispatch"]["reused"] is True, f"reload {i + 1}: {st['dispatch']}"
        assert st["agentIdentity"] == lesson.agent_identity, f"reload {i + 1}: another tutor"
        assert st["sessionId"] == lesson.session_id, f"reload {i + 1}: another session"
        present_ms.append(int(st["agentPresentAtMs"]))
    assert await lesson.assert_one_of_each() == before
    # A learner hammering F5: each reload leaves the page before its join and connect are done.
    for _ in range(RAPID_RELOADS):
        await lesson.page.reload(wait_until="commit")
        await lesson.page.wait_for_timeout(150)
    st = await lesson.wait_tutor()
    assert st["dispatch"]["reused"] is True and st["agentIdentity"] == lesson.agent_identity
    assert st["sessionId"] == lesson.session_id
    assert await lesson.assert_one_of_each() == before
    await lesson.screenshot("after-reloads")
    write_figures(
        lesson.logs_dir,
        learner_figures,
        reloads=RELOADS,
        rapid_reloads=RAPID_RELOADS,
        reload_agent_present_ms=present_ms,
        reload_agent_present_median_ms=statistics.median(present_ms),
    )


async def test_network_cut_comes_back_to_the_same_tutor(lesson: Lesson) -> None:
    await lesson.open()
    assert lesson.page is not None and lesson.context is not None
    before = await lesson.assert_one_of_each()
    reconnects, joins = (await lesson.state())["reconnects"], (await lesson.state())["joins"]
    await lesson.context.set_offline(True)  # DevTools network emulation: offline
    await lesson.page.wait_for_timeout(OFFLINE_SECONDS * 1000)
    await lesson.context.set_offline(False)

    async def came_back() -> dict[str, Any] | None:
        st = await lesson.state()
        noticed = st["reconnects"] > reconnects or st["joins"] > joins
        return st if noticed and st["connection"] == "connected" and st["agentIdentity"] else None

    st = await until(came_back, "the page to notice the cut and reconnect", PAGE_TIMEOUT)
    assert st["agentIdentity"] == lesson.agent_identity and st["sessionId"] == lesson.session_id
    assert await lesson.assert_one_of_each() == before


async def test_closed_tab_goes_idle_expires_and_stores_one_session(lesson: Lesson) -> None:
    await lesson.open()
    assert lesson.context is not None
    name = dispatch_name(lesson.room, lesson.agent_name)
    await lesson.context.close()
    lesson.context, lesson.page, lesson.closed = None, None, True

    async def idle() -> dict[str, Any] | None:
        objs = await lesson.objects()
        return objs[0]["status"] if objs and objs[0]["status"].get("phase") == "Idle" else None

    status = await until(idle, f"{name} to go Idle", PAGE_TIMEOUT)
    assert status["expiresAt"] and status["idleSince"] and status["participants"] == 0

    async def expired() -> bool:
        return not await lesson.objects()

    await until(expired, f"{name} to expire ({LEARNERS_TTL_SECONDS} s TTL)", LEARNERS_TTL_SECONDS + 60, 1)

    async def gone_from_livekit() -> bool:
        dispatches, agents = await lesson.livekit()
        return not dispatches and not agents

    await until(gone_from_livekit, "the LiveKit dispatch and the agent to go", 60, 1)

    async def first_record() -> dict[str, Any] | None:
        rec = await lesson.records()
        return rec if rec["sessions"] else None

    await until(first_record, "the session record", 60, 1)
    await asyncio.sleep(2)  # a duplicate would come right after the first: give it the chance
    rec = await lesson.records()
    assert [s["session_id"] for s in rec["sessions"]] == [lesson.session_id]
    assert [p for p in rec["progress_updates"] if p["data"]["status"] == "completed"]


async def test_fresh_page_loads_each_get_exactly_one_tutor(
    stack_env: dict[str, str], browser: Browser, logs_dir: Path, lesson: Lesson, learner_figures: dict[str, Any]
) -> None:
    """10 first visits to 10 new rooms (a cold dispatch and a new agent job each): every page gets
    its tutor, every room exactly one AgentDispatch, one dispatch and one agent. The time from page
    load to the tutor's presence is recorded (median of 10) for the notes."""
    present_ms: list[int] = []
    for i in range(RELOADS):
        room = f"fresh-{i}-{uuid.uuid4().hex[:6]}"
        one = Lesson(
            stack_env,
            browser,
            logs_dir,
            lesson.agent_name,
            lesson.user_id,
            room,
            page_url(stack_env, sign_in_token(stack_env, lesson.user_id), room, lesson.agent_name),
        )
        try:
            st = await one.open()
            assert st["dispatch"]["reused"] is False, st["dispatch"]
            await one.assert_one_of_each()
            present_ms.append(int(st["agentPresentAtMs"]))
        finally:
            await one.close()
    write_figures(
        logs_dir,
        learner_figures,
        fresh_loads=RELOADS,
        fresh_load_agent_present_ms=present_ms,
        fresh_load_agent_present_median_ms=statistics.median(present_ms),
    )
