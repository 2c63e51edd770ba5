"""POST /api/v1/rooms/join and GET /api/v1/rooms/{room}/agent of the stack's reference API, for real:
its own ServiceAccount token against kube-apiserver, server-side apply, the operator binding the
object to a livekit-server dispatch. Page refreshes are many joins: one object, one dispatch."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from livekit import api

from loqua_devstack.loqua_api.dispatches import dispatch_name
from loqua_devstack.loqua_api.tokens import mint_agent_token, mint_learner_token
from loqua_devstack.services import ServiceProcess, kubectl
from loqua_devstack.stack import WEB_BACKEND_SA
from tests.integration.conftest import live_dispatches
from tests.unit.test_loqua_api import assert_error

pytestmark = pytest.mark.integration


@pytest.fixture
async def learner(stack_env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A user of the reference API and the Authorization header of their sign-in token."""
    admin = {"Authorization": f"Bearer {stack_env['LOQUA_ADMIN_TOKEN']}"}
    user_id = f"it-learner-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=stack_env["LOQUA_API_URL"], timeout=15, headers=admin) as http:
        resp = await http.post(
            "/admin/users", json={"user_id": user_id, "email": f"{user_id}@example.com", "display_name": "Ana Test"}
        )
        assert resp.status_code == 201, resp.text
        token = (await http.post(f"/admin/users/{user_id}/token")).json()["token"]
    return user_id, {"Authorization": f"Bearer {token}"}


def objects_for(stack_env: dict[str, str], room: str) -> list[dict]:
    out = kubectl(
        stack_env,
        "get",
        "ad",
        "-n",
        stack_env["DISPATCH_NAMESPACE"],
        "--show-managed-fields",
        "-o",
        "json",
        f"--field-selector=spec.room={room}",
    )
    return json.loads(out)["items"]


async def test_join_with_no_operator_waits_a_bounded_time_and_answers_pending(
    stack_env: dict[str, str], learner: tuple[str, dict[str, str]]
) -> None:
    """Before this module's operator starts nobody binds the object: the join waits its
    JOIN_DISPATCH_WAIT_SECONDS (the stack's default, 10 s) for Dispatched, then answers 200 Pending,
    so the page can connect and wait for the agent. (It is the first test of the module on purpose.)"""
    _, auth = learner
    room, agent = f"it-wait-{uuid.uuid4().hex[:8]}", f"it-tutor-{uuid.uuid4().hex[:6]}"
    body = {"room_name": room, "agent_name": agent}
    try:
        async with httpx.AsyncClient(base_url=stack_env["LOQUA_API_URL"], timeout=60, headers=auth) as http:
            started = time.monotonic()
            first = await http.post("/api/v1/rooms/join", json=body)
            waited = time.monotonic() - started
            again = await http.post("/api/v1/rooms/join", json=body)
        assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
        assert first.json()["dispatch"] == {
            "name": dispatch_name(room, agent),
            "dispatchId": None,
            "reused": False,
            "phase": "Pending",
        }, "an operator watches the API's namespace already"
        assert again.json()["dispatch"]["reused"] is True and again.json()["dispatch"]["phase"] == "Pending"
        # It waited for the operator (a join that does not wait answers in well under a second) and
        # then stopped waiting: 10 s plus a loaded machine's slack, not the 30+ s of a hung watch.
        assert 9.5 <= waited < 30, waited
    finally:
        kubectl(
            stack_env,
            "delete",
            "ad",
            "-n",
            stack_env["DISPATCH_NAMESPACE"],
            dispatch_name(room, agent),
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )


async def test_refreshes_make_one_object_and_one_dispatch(
    stack_env: dict[str, str], learners_operator: ServiceProcess, learner: tuple[str, dict[str, str]]
) -> None:
    user_id, auth = learner
    room, agent = f"it-join-{uuid.uuid4().hex[:8]}", f"it-tutor-{uuid.uuid4().hex[:6]}"
    body = {"room_name": room, "agent_name": agent}
    async with httpx.AsyncClient(base_url=stack_env["LOQUA_API_URL"], timeout=30, headers=auth) as http:
        first = await http.post("/api/v1/rooms/join", json=body)
        assert first.status_code == 200, first.text
        # A storm of refreshes: 5 at once, then 5 one after another.
        burst = await asyncio.gather(*(http.post("/api/v1/rooms/join", json=body) for _ in range(5)))
        serial = [await http.post("/api/v1/rooms/join", json=body) for _ in range(5)]
        status = await http.get(f"/api/v1/rooms/{room}/agent", params={"agent_name": agent})
        missing = await http.get(f"/api/v1/rooms/{room}-none/agent", params={"agent_name": agent})
    joins = [first.json()] + [r.json() for r in (*burst, *serial)]
    assert all(r.status_code == 200 for r in (*burst, *serial))
    for j in joins:
        assert set(j) == {"url", "token", "room", "dispatch"}
        assert set(j["dispatch"]) == {"name", "dispatchId", "reused", "phase"}
        assert j["url"] == stack_env["LIVEKIT_URL"] and j["room"] == room
    name = dispatch_name(room, agent)
    assert {j["dispatch"]["name"] for j in joins} == {name}
    # The first join created it and waited for the operator to bind it; every refresh reused it.
    assert joins[0]["dispatch"]["reused"] is False and joins[0]["dispatch"]["phase"] == "Dispatched"
    assert all(j["dispatch"]["reused"] is True for j in joins[1:])
    dispatch_ids = {j["dispatch"]["dispatchId"] for j in joins}
    assert len(dispatch_ids) == 1 and None not in dispatch_ids

    objs = objects_for(stack_env, room)
    assert [o["metadata"]["name"] for o in objs] == [name]
    assert objs[0]["spec"] == {"room": room, "agentName": agent}
    managers = {m["manager"] for m in objs[0]["metadata"]["managedFields"] if m["operation"] == "Apply"}
    assert managers == {"loqua-api"}
    async with api.LiveKitAPI(
        stack_env["LIVEKIT_URL"], stack_env["LIVEKIT_API_KEY"], stack_env["LIVEKIT_API_SECRET"]
    ) as lk:
        found = await live_dispatches(lk, room, agent)
    assert [d.id for d in found] == list(dispatch_ids)

    # The learner's LiveKit token: seed 003's attributes, this room only, the same session throughout.
    verifier = api.TokenVerifier(stack_env["LIVEKIT_API_KEY"], stack_env["LIVEKIT_API_SECRET"])
    grants = [verifier.verify(j["token"]) for j in joins]
    for g in grants:
        assert g.video.room == room and g.video.room_join and g.video.can_publish
        assert g.attributes["user_id"] == user_id
        assert g.attributes["email"] == f"{user_id}@example.com" and g.attributes["display_name"] == "Ana Test"
        assert g.attributes["sessionId"].startswith("sess_")
        assert g.identity.startswith(f"learner-{user_id}-")
    assert len({g.attributes["sessionId"] for g in grants}) == 1

    assert status.status_code == 200, status.text
    st = status.json()
    assert st["dispatch"]["name"] == name and st["dispatch"]["dispatchId"] in dispatch_ids
    assert st["learners"] == 0 and st["agentPresent"] is False and "expiresAt" in st
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "DISPATCH_NOT_FOUND"
    log = (Path(stack_env["DEVSTACK_DIR"]) / "logs" / "loqua-api.log").read_text()
    assert all(j["token"] not in log for j in joins) and auth["Authorization"][7:] not in log


async def test_bad_tokens_and_bodies_get_the_error_shape_and_make_no_object(
    stack_env: dict[str, str], learner: tuple[str, dict[str, str]]
) -> None:
    """What a caller gets wrong, against the stack's API: seed 003's error shape naming the problem,
    and no AgentDispatch object for the room (nothing reached Kubernetes)."""
    user_id, auth = learner
    secret = stack_env["LOQUA_JWT_SECRET"]
    room, agent = f"it-bad-{uuid.uuid4().hex[:8]}", "spanish-tutor"
    good = {"room_name": room, "agent_name": agent}

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    cases: list[tuple[dict[str, str], object, int, str]] = [
        ({}, good, 401, "MISSING_TOKEN"),
        (bearer("not-a-jwt"), good, 401, "INVALID_TOKEN"),
        (bearer(mint_learner_token("another-secret-0123456789abcdef01", user_id, 600)), good, 401, "INVALID_TOKEN"),
        (bearer(mint_learner_token(secret, user_id, -10)), good, 401, "TOKEN_EXPIRED"),
        (bearer(mint_agent_token(secret, "tutor", 600)), good, 401, "WRONG_TOKEN_ROLE"),
        (auth, b"{not json", 400, "INVALID_JSON"),
        (auth, [good], 400, "INVALID_JSON"),
        (auth, {"agent_name": agent}, 400, "MISSING_FIELD"),
        (auth, {"room_name": room}, 400, "MISSING_FIELD"),
        (auth, {**good, "room_name": f"{room}\n"}, 400, "INVALID_FIELD"),
        (auth, {**good, "room_name": f"{room} x"}, 400, "INVALID_FIELD"),
        (auth, {**good, "agent_name": "Spanish_Tutor"}, 400, "INVALID_FIELD"),
        (auth, {**good, "ttlSeconds": 1}, 400, "INVALID_FIELD"),
        (bearer(mint_learner_token(secret, f"nobody-{uuid.uuid4().hex[:6]}", 600)), good, 404, "USER_NOT_FOUND"),
    ]
    async with httpx.AsyncClient(base_url=stack_env["LOQUA_API_URL"], timeout=30) as http:
        for headers, body, status, code in cases:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            resp = await http.post(
                "/api/v1/rooms/join", content=data, headers={**headers, "Content-Type": "application/json"}
            )
            assert resp.status_code == status, (code, resp.text)
            assert_error(resp.json(), code)
        for headers, path, status, code in [
            ({}, f"/api/v1/rooms/{room}/agent?agent_name={agent}", 401, "MISSING_TOKEN"),
            (auth, f"/api/v1/rooms/{room}/agent", 400, "MISSING_FIELD"),
            (auth, f"/api/v1/rooms/{room}%0A/agent?agent_name={agent}", 400, "INVALID_FIELD"),
            (auth, f"/api/v1/rooms/{room}/agent?agent_name={agent}", 404, "DISPATCH_NOT_FOUND"),
        ]:
            resp = await http.get(path, headers=headers)
            assert resp.status_code == status, (code, resp.text)
            assert_error(resp.json(), code)
        wrong_method = await http.get("/api/v1/rooms/join", headers=auth)
        assert wrong_method.status_code == 405
        assert_error(wrong_method.json(), "METHOD_NOT_ALLOWED")
    assert objects_for(stack_env, room) == []


def can_i(stack_env: dict[str, str], *args: str, kubeconfig: str | None = None) -> bool:
    env = {**stack_env, "KUBECONFIG": kubeconfig or stack_env["KUBECONFIG"]}
    out = kubectl(env, "auth", "can-i", *args, check=False).strip().splitlines()
    assert out and out[-1] in ("yes", "no"), out
    return out[-1] == "yes"


AD = "agentdispatches.agents.loqua.app"


@pytest.mark.parametrize("verb", ["create", "get", "patch", "watch"])
def test_the_api_may_ensure_and_watch_dispatches_in_its_namespace(stack_env: dict[str, str], verb: str) -> None:
    own = str(Path(stack_env["DEVSTACK_DIR"]) / "loqua-api.kubeconfig")
    assert can_i(stack_env, verb, AD, "-n", stack_env["DISPATCH_NAMESPACE"], kubeconfig=own)


def test_the_stack_api_runs_with_its_own_kubeconfig(stack_env: dict[str, str]) -> None:
    """The running API process was given the ServiceAccount's kubeconfig, no other credentials."""
    state = json.loads((Path(stack_env["DEVSTACK_DIR"]) / "state.json").read_text())
    environ = Path(f"/proc/{state['pids']['loqua-api']}/environ").read_bytes().split(b"\0")
    env = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if b"=" in item)
    own = Path(stack_env["DEVSTACK_DIR"]) / "loqua-api.kubeconfig"
    assert Path(env["KUBECONFIG"]).resolve() == own.resolve()
    users = json.loads(own.read_text())["users"]
    assert [u["name"] for u in users] == [WEB_BACKEND_SA] and set(users[0]["user"]) == {"token"}
    whoami = kubectl({**stack_env, "KUBECONFIG": str(own)}, "auth", "whoami", "-o", "json")
    sa = f"system:serviceaccount:{stack_env['DISPATCH_NAMESPACE']}:{WEB_BACKEND_SA}"
    assert json.loads(whoami)["status"]["userInfo"]["username"] == sa


@pytest.mark.parametrize(
    ("verb", "resource", "where"),
    [
        ("list", AD, "own"),
        ("delete", AD, "own"),
        ("update", AD, "own"),
        ("deletecollection", AD, "own"),
        ("patch", AD + "/status", "own"),
        ("create", AD, "default"),
        ("get", AD, "default"),
        ("get", "secrets", "own"),
        ("create", "pods", "own"),
        ("create", "serviceaccounts/token", "own"),
        ("list", "namespaces", "cluster"),
    ],
)
def test_the_api_may_do_nothing_else(stack_env: dict[str, str], verb: str, resource: str, where: str) -> None:
    """Checked both with the API's own token and by impersonating its ServiceAccount."""
    scope = {"own": ["-n", stack_env["DISPATCH_NAMESPACE"]], "default": ["-n", "default"], "cluster": ["-A"]}[where]
    res, _, sub = resource.partition("/")
    args = [verb, res, *scope, *([f"--subresource={sub}"] if sub else [])]
    own = str(Path(stack_env["DEVSTACK_DIR"]) / "loqua-api.kubeconfig")
    assert not can_i(stack_env, *args, kubeconfig=own)
    sa = f"system:serviceaccount:{stack_env['DISPATCH_NAMESPACE']}:{WEB_BACKEND_SA}"
    assert not can_i(stack_env, *args, f"--as={sa}")
