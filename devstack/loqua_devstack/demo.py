"""`make demo`: bring the local stack up, run the main scenario on it, narrate, clean up.

Every step checks that what it narrates really happened; the demo exits non-zero otherwise and
always leaves nothing running that it started.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from livekit import api

from loqua_devstack.learner import (
    Learner,
    create_user,
    exit_past_rtc_teardown,
    page_url,
    session_records,
    sign_in_token,
)
from loqua_devstack.services import ServiceProcess, kubectl, operator_process, tutor_process
from loqua_devstack.stack import DISPATCH_NAMESPACE, Stack, devstack_dir, quiet_dev_secret_warning

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"


def headline(detail: str) -> str:
    """One line for the summary: skip kubectl's table headers, keep the data."""
    lines = [line for line in detail.splitlines() if line.strip() and not line.startswith("NAME ")]
    return " ".join(lines[0].split()) if lines else ""


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    rows: list[tuple[str, str, float]] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def step(self, title: str, fn: Callable[[], str]) -> str:
        self.say(f"▶ {title}")
        t0 = time.monotonic()
        try:
            detail = fn()
        except Exception as exc:
            self.rows.append((title, f"FAILED: {exc}", time.monotonic() - t0))
            raise
        self.rows.append((title, detail, time.monotonic() - t0))
        for line in detail.splitlines():
            self.say(f"    {line}")
        return detail

    def summary(self) -> str:
        out = ["", "| step | result | seconds |", "| --- | --- | ---: |"]
        out += [f"| {t} | {headline(r)} | {s:.1f} |" for t, r, s in self.rows]
        return "\n".join(out)


async def livekit_round_trip(env: dict[str, str], room: str) -> str:
    lk = api.LiveKitAPI(env["LIVEKIT_URL"], env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"])
    try:
        await lk.room.create_room(api.CreateRoomRequest(name=room))
        rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        if [r.name for r in rooms.rooms] != [room]:
            raise RuntimeError(f"room {room} not listed")
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        return f"room {room} created and listed, then deleted"
    finally:
        await lk.aclose()


async def dispatches_of(env: dict[str, str], room: str) -> list[api.AgentDispatch]:
    lk = api.LiveKitAPI(env["LIVEKIT_URL"], env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"])
    try:
        return [d for d in await lk.agent_dispatch.list_dispatch(room) if d.agent_name]
    except api.TwirpError as exc:
        if exc.code == "not_found":
            return []
        raise
    finally:
        await lk.aclose()


def loqua_health(env: dict[str, str]) -> str:
    # The worker's own decryption: the demo exercises the real token passthrough.
    from loqua_common.tokenkey import derive_key, parse_pad_byte
    from loqua_tutor.crypto import decrypt_user_token

    base = env["LOQUA_API_URL"]
    with httpx.Client(base_url=base, timeout=10) as http:
        user = http.post(
            "/admin/users",
            headers={"Authorization": f"Bearer {env['LOQUA_ADMIN_TOKEN']}"},
            json={"email": "demo@example.com", "display_name": "Demo Learner"},
        )
        user.raise_for_status()
        user_id = user.json()["user_id"]
        agent_headers = {"Authorization": f"Bearer {env['AGENT_JWT_TOKEN']}", "X-Agent-ID": env["AGENT_ID"]}
        tok = http.post(
            "/api/v1/agent/user-token",
            headers=agent_headers,
            json={"room_name": "demo", "user_id": user_id, "agent_id": env["AGENT_ID"]},
        )
        tok.raise_for_status()
        key = derive_key(env["SHARED_SECRET"], parse_pad_byte(env.get("SHARED_SECRET_PAD_BYTE")))
        user_jwt = decrypt_user_token(tok.json()["encrypted_token"], key)
        health = http.post(
            "/api/v1/agent/health",
            json={"userId": user_id},
            headers={"Authorization": f"Bearer {user_jwt}", "X-Agent-ID": env["AGENT_ID"]},
        )
        health.raise_for_status()
        body = health.json()
    return f"learner {user_id} created; token exchanged and decrypted; health: {body['status']}"


AGENT = "spanish-tutor"
TTL = 15
PAGE_RELOADS = 3


async def browser_join_and_refresh(env: dict[str, str]) -> str:
    """The real learner page (livekit-client) in Debian's headless Chromium: sign in, join through
    POST /api/v1/rooms/join, the tutor joins; reload; then end the lesson (delete the object)."""
    from playwright.async_api import async_playwright

    from loqua_devstack import browser
    from loqua_devstack.loqua_api.dispatches import dispatch_name

    user = create_user(env, "Bea")
    room = f"page-{uuid.uuid4().hex[:6]}"
    name = dispatch_name(room, AGENT)
    shot = Path(env["DEVSTACK_DIR"]) / "logs" / "demo-learner-page.png"
    try:
        async with async_playwright() as pw:
            b = await browser.launch(pw)
            try:
                page = await (await b.new_context()).new_page()
                await page.goto(page_url(env, sign_in_token(env, user["user_id"]), room, AGENT))
                first = await browser.wait_tutor(page, 60)
                await page.screenshot(path=str(shot))
                seen = []
                for _ in range(PAGE_RELOADS):
                    await page.reload()
                    seen.append(await browser.wait_tutor(page, 30))
            finally:
                await b.close()
        same_tutor = {s["agentIdentity"] for s in seen} == {first["agentIdentity"]}
        if not same_tutor or not all(s["dispatch"]["reused"] for s in seen):
            raise RuntimeError(f"a reload changed the tutor or the dispatch: {first} then {seen}")
        objects = json.loads(kubectl(env, "get", "ad", "-n", DISPATCH_NAMESPACE, "-o", "json"))["items"]
        mine = [o for o in objects if o["spec"]["room"] == room]
        found = await dispatches_of(env, room)
        if [o["metadata"]["name"] for o in mine] != [name] or len(found) != 1:
            raise RuntimeError(f"{len(mine)} AgentDispatch objects and {len(found)} LiveKit dispatches for {room}")
        return (
            f"page joined {room}: tutor {first['agentIdentity']} present {first['agentPresentAtMs']} ms after load, "
            f"session {first['sessionId']}\n{PAGE_RELOADS} reloads: reused dispatch {found[0].id}, the same tutor, "
            f"1 AgentDispatch ({name}), 1 LiveKit dispatch; screenshot {shot}"
        )
    finally:
        kubectl(env, "delete", "ad", name, "-n", DISPATCH_NAMESPACE, "--ignore-not-found", "--timeout=60s", check=False)


def run(coro):  # type: ignore[no-untyped-def]
    return LOOP.run_until_complete(coro)


LOOP = asyncio.new_event_loop()


def wait_loop(check, what: str, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll ``check`` while the event loop runs, so the learner's rtc events keep arriving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        run(asyncio.sleep(interval))
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def get_status(env: dict[str, str], name: str) -> dict:
    return json.loads(kubectl(env, "get", "ad", name, "-n", "default", "-o", "json")).get("status") or {}


def main() -> int:
    quiet_dev_secret_warning()
    tl = Timeline()
    stack = Stack(devstack_dir())
    started_stack = not stack.any_running()
    operator: ServiceProcess | None = None
    worker: ServiceProcess | None = None
    ok = False
    try:
        env = {}

        def up() -> str:
            env.update(stack.up())
            running = {p: i for p, i in stack.status().items() if i["running"]}
            return f"{len(running)} parts on 127.0.0.1: {', '.join(running)}\n" + "\n".join(
                f"{p:<24} {i['address']}" for p, i in running.items()
            )

        tl.step("local stack up", up)
        tl.step(
            "kube-apiserver answers",
            lambda: (
                json.loads(kubectl(env, "version", "-o", "json"))["serverVersion"]["gitVersion"]
                + f", /readyz: {kubectl(env, 'get', '--raw', '/readyz')}"
            ),
        )
        tl.step(
            "livekit-server answers",
            lambda: run(livekit_round_trip(env, f"demo-{uuid.uuid4().hex[:6]}")),
        )
        tl.step("Loqua API answers", lambda: loqua_health(env))
        tl.step("AgentDispatch CRD installed", lambda: kubectl(env, "apply", "-f", str(CRD_DIR)))

        def start_operator() -> str:
            nonlocal operator
            operator = operator_process(
                env,
                Path(env["DEVSTACK_DIR"]) / "logs" / "demo-operator.log",
                namespaces=["default", DISPATCH_NAMESPACE],  # and the learner page's objects
                extra_env={"LEASE_NAME": "demo-operator", "CLEANUP_INTERVAL_MS": "2000"},
            ).start()
            operator.wait_healthy(timeout=60, body="ok")
            return f"loqua-operator running (pid {operator.pid}, log {operator.log_file})"

        tl.step("operator running", start_operator)

        def start_worker() -> str:
            nonlocal worker
            worker = tutor_process(
                env,
                Path(env["DEVSTACK_DIR"]) / "logs" / "demo-tutor.log",
                agent_name=AGENT,
                extra_env={"PROGRESS_INTERVAL_SECONDS": "3", "JOB_EXECUTOR": "thread"},
            ).start()
            worker.wait_healthy(timeout=90, body="ok")
            return f"loqua-tutor registered as {AGENT!r} (pid {worker.pid}, log {worker.log_file})"

        tl.step("tutor worker running", start_worker)
        room = f"lesson-{uuid.uuid4().hex[:6]}"
        user = create_user(env)
        manifest = json.dumps(
            {
                "apiVersion": "agents.loqua.app/v1alpha1",
                "kind": "AgentDispatch",
                "metadata": {"name": room, "namespace": "default"},
                "spec": {"room": room, "agentName": AGENT, "ttlSeconds": TTL},
            }
        )

        def apply_and_wait() -> str:
            kubectl(env, "apply", "-f", "-", input_=manifest)
            kubectl(env, "wait", f"ad/{room}", "--for=jsonpath={.status.phase}=Dispatched", "--timeout=60s")
            st = get_status(env, room)
            return (
                f"phase Dispatched: LiveKit dispatch {st['dispatchId']} "
                f"{'reused' if st.get('reused') else 'created'}, agent {AGENT} on its way\n"
                + kubectl(env, "get", "ad", room)
            )

        tl.step(f"AgentDispatch {room} applied with kubectl → Dispatched", apply_and_wait)
        learner = Learner(
            env,
            room,
            user_id=user["user_id"],
            sessionId=f"sess_{int(time.time() * 1000)}_demo",
            display_name=user["display_name"],
            email=user["email"],
        )
        agent_identity: dict[str, str] = {}

        def learner_joins() -> str:
            run(learner.join())
            agent = wait_loop(lambda: next(iter(learner.agents_in_room()), None), "the agent in the room", 60)
            agent_identity["id"] = agent.identity
            wait_loop(lambda: agent.attributes.get("loqua.status") == "active", "the session to start", 60)
            kubectl(env, "wait", f"ad/{room}", "--for=jsonpath={.status.phase}=Active", "--timeout=30s")
            return (
                f"learner {user['display_name']} joined; agent {agent.identity} joined and started session "
                f"{agent.attributes.get('loqua.session_id')}\n" + kubectl(env, "get", "ad", room)
            )

        tl.step("a learner joins; the agent joins and the session starts", learner_joins)

        def practise() -> str:
            agent = learner.agents_in_room()[0]
            calls = [
                ("new_word", {"word": "hola", "translation": "hello", "language": "es"}),
                ("new_word", {"word": "gracias", "translation": "thank you", "language": "es"}),
                ("phrase_practised", {"phrase": "¿Cómo estás?"}),
                ("pronunciation_score", {"score": 86}),
                ("grammar_point", {"point": "present_tense"}),
            ]
            for tool, args in calls:
                reply = json.loads(
                    run(
                        learner.room.local_participant.perform_rpc(
                            destination_identity=agent.identity,
                            method="tutor.tool",
                            payload=json.dumps({"tool": tool, "args": args}),
                        )
                    )
                )
                if not reply.get("ok"):
                    raise RuntimeError(f"tool {tool} failed: {reply}")
            return f"{len(calls)} tutor tool calls (new words, a phrase, a pronunciation score, a grammar point)"

        tl.step("the tutor's tools record progress", practise)

        def refresh() -> str:
            before = get_status(env, room)["dispatchId"]
            run(learner.refresh())
            agent = wait_loop(lambda: next(iter(learner.agents_in_room()), None), "the agent after refresh", 30)
            if agent.identity != agent_identity["id"]:
                raise RuntimeError(f"a different agent after the refresh: {agent.identity}")
            after = get_status(env, room)["dispatchId"]
            if after != before:
                raise RuntimeError(f"dispatch changed from {before} to {after}")
            return f"learner left and rejoined: same agent {agent.identity}, same dispatch {after}"

        tl.step("page refresh: the same agent stays", refresh)
        tl.step(
            "the learner page in headless Chromium joins and refreshes: one dispatch, the same tutor",
            lambda: run(browser_join_and_refresh(env)),
        )

        def refresh_storm() -> str:
            for _ in range(20):
                kubectl(env, "apply", "-f", "-", input_=manifest)
            found = run(dispatches_of(env, room))
            agents = learner.agents_in_room()
            if len(found) != 1 or len(agents) != 1:
                raise RuntimeError(f"{len(found)} dispatches and {len(agents)} agents after the storm")
            return f"20 re-applies: still 1 LiveKit dispatch ({found[0].id}) and 1 agent in the room"

        tl.step("refresh storm creates no second agent", refresh_storm)

        def learner_leaves() -> str:
            run(learner.leave())
            kubectl(env, "wait", f"ad/{room}", "--for=jsonpath={.status.phase}=Idle", "--timeout=30s")
            st = get_status(env, room)
            return (
                f"learner left; Idle since {st['idleSince']}, expires at {st['expiresAt']} (TTL {TTL} s)\n"
                + kubectl(env, "get", "ad", room)
            )

        tl.step("the learner leaves: Idle, the TTL runs", learner_leaves)

        def expiry() -> str:
            wait_loop(
                lambda: not kubectl(env, "get", "ad", "-n", "default", "--ignore-not-found", room).strip(),
                "the object to expire",
                TTL + 60,
                interval=1,
            )
            if run(dispatches_of(env, room)):
                raise RuntimeError("the LiveKit dispatch outlived its object")
            answer = kubectl(env, "get", "ad", room, "-n", "default", check=False).strip()
            if "NotFound" not in answer:
                raise RuntimeError(f"kubectl get ad {room} still answers: {answer}")
            return f"TTL expired: the LiveKit dispatch and the AgentDispatch object are gone\n{answer}"

        tl.step("TTL expires: dispatch and object deleted", expiry)

        def session_record() -> str:
            records = wait_loop(lambda: session_records(env, user["user_id"]), "the session record", 60, interval=1)
            sessions, progress = records["sessions"], records["progress_updates"]
            if len(sessions) != 1:
                raise RuntimeError(f"{len(sessions)} session records, expected exactly 1")
            final = [p for p in progress if p["data"]["status"] == "completed"]
            rec = sessions[0]
            return (
                f"1 session record: {rec['overall_performance']}, {len(rec['new_vocabulary'])} new words, "
                f"achievements {rec['achievements']}; {len(progress)} progress updates, "
                f"{len(final)} final (completed)"
            )

        tl.step("the learning session record is in the Loqua API", session_record)
        ok = True
    except Exception as exc:
        tl.say(f"✗ demo failed: {exc}")
    finally:
        if worker is not None:
            worker.stop(timeout=60)
            tl.say("tutor worker stopped")
        if operator is not None:
            operator.stop()
            tl.say("operator stopped")
        if started_stack:
            stack.down()
            tl.say("local stack stopped")
        print(tl.summary())
    print("\ndemo " + ("passed" if ok else "FAILED (logs in .devstack/logs/)"))
    return 0 if ok else 1


if __name__ == "__main__":
    exit_past_rtc_teardown(main())
