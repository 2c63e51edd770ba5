"""`make demo`: bring the local stack up, run the main scenario on it, narrate, clean up.

Every step checks that what it narrates really happened; the demo exits non-zero otherwise and
always leaves nothing running that it started.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from livekit import api

from loqua_devstack.services import ServiceProcess, kubectl, operator_process, wait_for
from loqua_devstack.stack import Stack, devstack_dir

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"


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
        out += [f"| {t} | {r.splitlines()[0] if r else ''} | {s:.1f} |" for t, r, s in self.rows]
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


def main() -> int:
    # livekit-server --dev's secret is 6 bytes; PyJWT warns about it on every signing. Dev only.
    warnings.filterwarnings("ignore", message="The HMAC key is")
    tl = Timeline()
    stack = Stack(devstack_dir())
    started_stack = not stack.is_up()
    operator: ServiceProcess | None = None
    ok = False
    try:
        env = {}

        def up() -> str:
            env.update(stack.up())
            return "\n".join(f"{p:<24} {i['address']}" for p, i in stack.status().items() if i["running"])

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
            lambda: asyncio.run(livekit_round_trip(env, f"demo-{uuid.uuid4().hex[:6]}")),
        )
        tl.step("Loqua API answers", lambda: loqua_health(env))
        tl.step("AgentDispatch CRD installed", lambda: kubectl(env, "apply", "-f", str(CRD_DIR)))

        def start_operator() -> str:
            nonlocal operator
            operator = operator_process(
                env,
                Path(env["DEVSTACK_DIR"]) / "logs" / "demo-operator.log",
                extra_env={"LEASE_NAME": "demo-operator"},
            ).start()
            operator.wait_healthy(timeout=60, body="ok")
            return f"loqua-operator running (pid {operator.pid}, log {operator.log_file})"

        tl.step("operator running", start_operator)
        room = f"lesson-{uuid.uuid4().hex[:6]}"
        manifest = json.dumps(
            {
                "apiVersion": "agents.loqua.app/v1alpha1",
                "kind": "AgentDispatch",
                "metadata": {"name": room, "namespace": "default"},
                "spec": {"room": room, "agentName": "spanish-tutor", "ttlSeconds": 30},
            }
        )

        def apply_and_wait() -> str:
            kubectl(env, "apply", "-f", "-", input_=manifest)
            kubectl(env, "wait", f"ad/{room}", "--for=jsonpath={.status.phase}=Dispatched", "--timeout=60s")
            return kubectl(env, "get", "ad", room)

        tl.step("AgentDispatch applied with kubectl → Dispatched", apply_and_wait)

        def refresh_storm() -> str:
            for _ in range(20):
                kubectl(env, "apply", "-f", "-", input_=manifest)
            found = asyncio.run(dispatches_of(env, room))
            if len(found) != 1:
                raise RuntimeError(f"{len(found)} dispatches after the refresh storm")
            return f"20 re-applies: still exactly 1 LiveKit dispatch ({found[0].id})"

        tl.step("refresh storm creates no second agent", refresh_storm)

        def delete_object() -> str:
            kubectl(env, "delete", "ad", room, "--timeout=60s")
            wait_for(lambda: not asyncio.run(dispatches_of(env, room)), "dispatch removed", 30)
            return "object deleted; the finalizer removed the LiveKit dispatch"

        tl.step("deletion removes the LiveKit dispatch", delete_object)
        ok = True
    except Exception as exc:
        tl.say(f"✗ demo failed: {exc}")
    finally:
        if operator is not None:
            operator.stop()
        if started_stack:
            stack.down()
            tl.say("local stack stopped")
        print(tl.summary())
    print("\ndemo " + ("passed" if ok else "FAILED (logs in .devstack/logs/)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
