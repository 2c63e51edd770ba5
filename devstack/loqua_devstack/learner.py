"""A scripted learner: a real LiveKit participant (the `livekit` rtc SDK) joining with attributes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.parse
import uuid
from typing import NoReturn

import httpx
from livekit import api, rtc


class Learner:
    """Joins a room the way the Loqua web app's users do: identity plus ``user_id`` etc. attributes."""

    def __init__(self, env: dict[str, str], room: str, user_id: str | None = None, **attributes: str) -> None:
        self.env = env
        self.room_name = room
        self.identity = f"learner-{uuid.uuid4().hex[:8]}"
        self.attributes = {"user_id": user_id or self.identity, **attributes}
        self.room: rtc.Room | None = None

    def token(self) -> str:
        return (
            api.AccessToken(self.env["LIVEKIT_API_KEY"], self.env["LIVEKIT_API_SECRET"])
            .with_identity(self.identity)
            .with_name(self.attributes.get("display_name", self.identity))
            .with_attributes(self.attributes)
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .to_jwt()
        )

    async def join(self) -> Learner:
        self.room = rtc.Room()
        await self.room.connect(self.env["LIVEKIT_URL"], self.token())
        return self

    async def leave(self) -> None:
        if self.room is not None:
            await self.room.disconnect()
            self.room = None

    async def refresh(self) -> None:
        """A page refresh: leave, then join again with the same identity and attributes."""
        await self.leave()
        await self.join()

    def agents_in_room(self) -> list[rtc.RemoteParticipant]:
        if self.room is None:
            return []
        return [
            p for p in self.room.remote_participants.values() if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ]


def create_user(env: dict[str, str], display_name: str = "Ana") -> dict:
    """A learner in the reference Loqua API (admin endpoint), learning Spanish."""
    resp = httpx.post(
        f"{env['LOQUA_API_URL']}/admin/users",
        timeout=10,
        headers={"Authorization": f"Bearer {env['LOQUA_ADMIN_TOKEN']}"},
        json={
            "email": f"{'.'.join(display_name.lower().split())}-{uuid.uuid4().hex[:4]}@example.com",
            "display_name": display_name,
            "preferences": {
                "language_learning": "spanish",
                "native_language": "english",
                "learning_pace": "moderate",
                "focus_areas": ["vocabulary"],
            },
        },
    )
    resp.raise_for_status()
    return resp.json()


def sign_in_token(env: dict[str, str], user_id: str) -> str:
    """The learner's sign-in JWT from the reference API (what a real backend's login hands out)."""
    resp = httpx.post(
        f"{env['LOQUA_API_URL']}/admin/users/{user_id}/token",
        timeout=10,
        headers={"Authorization": f"Bearer {env['LOQUA_ADMIN_TOKEN']}"},
    )
    resp.raise_for_status()
    return str(resp.json()["token"])


def page_url(env: dict[str, str], token: str, room: str, agent_name: str) -> str:
    """The learner page's address, signed in: the token rides in the fragment (never sent to a
    server, removed from the address bar by the page, kept in the tab's sessionStorage)."""
    query = urllib.parse.urlencode({"room": room, "agent": agent_name})
    return f"{env['LOQUA_WEB_URL']}?{query}#token={token}"


def session_records(env: dict[str, str], user_id: str) -> dict | None:
    """The user's session records and progress updates, or None while there is no session record."""
    resp = httpx.get(
        f"{env['LOQUA_API_URL']}/admin/users/{user_id}/records",
        timeout=10,
        headers={"Authorization": f"Bearer {env['LOQUA_ADMIN_TOKEN']}"},
    )
    resp.raise_for_status()
    body = resp.json()
    return body if body["sessions"] else None


async def visit(
    env: dict[str, str], room: str, seconds: float | None, display_name: str = "Ana", agent_timeout: float = 60
) -> bool:
    """`loqua-dev learner`: a new user joins ``room``, reports the agent and its session, stays for
    ``seconds`` (None: until cancelled, e.g. Ctrl+C) and leaves. True if an agent joined."""
    user = create_user(env, display_name)
    learner = Learner(
        env,
        room,
        user_id=user["user_id"],
        sessionId=f"sess_{int(time.time() * 1000)}_dev",
        display_name=display_name,
        email=user["email"],
    )
    await learner.join()
    print(f"{display_name} (user {user['user_id']}) joined room {room} as {learner.identity}", flush=True)
    try:
        deadline = time.monotonic() + agent_timeout
        while not learner.agents_in_room() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        agents = learner.agents_in_room()
        if not agents:
            print(
                f"no agent joined within {agent_timeout:.0f} s: is an AgentDispatch for room {room} applied "
                "(kubectl get ad) and a tutor worker running with its agentName (make up runs spanish-tutor)?",
                flush=True,
            )
            return False
        agent = agents[0]
        while agent.attributes.get("loqua.status") != "active" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        print(
            f"agent {agent.identity} joined; session {agent.attributes.get('loqua.session_id', '-')} is "
            f"{agent.attributes.get('loqua.status', 'not started')}",
            flush=True,
        )
        print(f"staying {'until Ctrl+C' if seconds is None else f'{seconds:.0f} s'}", flush=True)
        await asyncio.sleep(float("inf") if seconds is None else seconds)
        return True
    finally:
        await learner.leave()
        print(
            f"{display_name} left room {room}. Once the dispatch ends (TTL), the session record is at "
            f"{env['LOQUA_API_URL']}/admin/users/{user['user_id']}/records (admin token: LOQUA_ADMIN_TOKEN)",
            flush=True,
        )


def exit_past_rtc_teardown(code: int) -> NoReturn:
    """End a process that used the rtc SDK without the interpreter's teardown. Its learners have
    left; what is left is the SDK's native runtime (liblivekit_ffi), whose atexit dispose races its
    tokio worker threads: a CI run saw a clean visit end in "panic in a function that cannot
    unwind" (SIGABRT, exit -6, tests/e2e/test_devstack_learner.py). Nothing of ours is pending."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
