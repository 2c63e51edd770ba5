"""The learner routes of the reference API without a cluster: names, settings, every error before
Kubernetes is asked (seed 003's error shape), and a clear 503 when Kubernetes cannot be reached.
The real server-side apply, watch and RBAC: tests/integration/test_rooms_join.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from loqua_devstack.loqua_api import ApiConfig, create_app, mint_agent_token
from loqua_devstack.loqua_api.config import ConfigError, RoomsConfig, load_rooms_config
from loqua_devstack.loqua_api.dispatches import DispatchView, dispatch_name, manifest
from loqua_devstack.loqua_api.tokens import mint_learner_token, verify_token
from tests.unit.test_loqua_api import ADMIN, ADMIN_TOKEN, JWT_SECRET, SHARED_SECRET, assert_error

DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ROOMS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
AGENTS = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


@given(ROOMS, AGENTS)
def test_dispatch_name_is_a_valid_object_name_and_deterministic(room: str, agent: str) -> None:
    name = dispatch_name(room, agent)
    assert len(name) <= 253 and DNS_1123.match(name), name
    assert dispatch_name(room, agent) == name


def test_rooms_that_fold_alike_get_objects_of_their_own() -> None:
    names = {dispatch_name(r, "tutor") for r in ("Lesson_1", "lesson.1", "lesson-1", "LESSON:1")}
    assert len(names) == 4
    assert dispatch_name("lesson-1", "tutor").startswith("lesson-1-tutor-")
    assert dispatch_name("lesson-1", "tutor") != dispatch_name("lesson-1", "tutor2")


def test_manifest_owns_only_the_spec_it_sets() -> None:
    body = manifest("n", "ns", "room", "tutor", None)
    assert body["spec"] == {"room": "room", "agentName": "tutor"}
    assert "status" not in body
    assert manifest("n", "ns", "room", "tutor", 60)["spec"]["ttlSeconds"] == 60


def test_bound_means_a_live_dispatch_or_failed() -> None:
    def view(status: dict) -> DispatchView:
        return DispatchView.of({"metadata": {"name": "n"}, "status": status})

    assert not view({}).bound and view({}).phase == "Pending"
    assert not view({"phase": "Pending"}).bound
    assert view({"phase": "Dispatched", "dispatchId": "AD_1"}).bound
    assert view({"phase": "Active", "dispatchId": "AD_1"}).bound
    assert view({"phase": "Failed"}).bound


def test_rooms_settings_are_optional_and_bad_ones_name_themselves(tmp_path: Path) -> None:
    assert load_rooms_config({}) is None
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("{}")
    env = {"LIVEKIT_URL": "ws://127.0.0.1:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "lk-secret-xyz"}
    cfg = load_rooms_config({**env, "KUBECONFIG": str(kubeconfig)})
    assert cfg is not None and cfg.namespace == "default" and cfg.dispatch_ttl_seconds is None
    assert "lk-secret-xyz" not in repr(cfg)
    for bad, name in (
        ({**env, "LIVEKIT_API_SECRET": ""}, "LIVEKIT_API_SECRET"),
        ({**env, "LIVEKIT_URL": "127.0.0.1:7880"}, "LIVEKIT_URL"),
        ({**env, "DISPATCH_NAMESPACE": "Not_A_Namespace"}, "DISPATCH_NAMESPACE"),
        ({**env, "DISPATCH_NAMESPACE": "learners\n"}, "DISPATCH_NAMESPACE"),
        ({**env, "KUBECONFIG": str(tmp_path / "missing")}, "KUBECONFIG"),
        ({**env, "JOIN_DISPATCH_WAIT_SECONDS": "soon"}, "JOIN_DISPATCH_WAIT_SECONDS"),
        ({**env, "DISPATCH_TTL_SECONDS": "-1"}, "DISPATCH_TTL_SECONDS"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_rooms_config(bad)


def test_learner_sign_in_token_is_a_user_token_for_no_room() -> None:
    claims = verify_token(JWT_SECRET, mint_learner_token(JWT_SECRET, "u1", 600), "user")
    assert claims["sub"] == "u1" and "room" not in claims and claims["exp"] - claims["iat"] == 600


# ---- the routes, against an unreachable Kubernetes API ---------------------------------------------


@pytest.fixture
def unreachable_kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def _config(tmp_path: Path, rooms: RoomsConfig | None) -> ApiConfig:
    return ApiConfig(
        db_path=tmp_path / "api.sqlite",
        jwt_secret=JWT_SECRET,
        shared_secret=SHARED_SECRET,
        admin_token=ADMIN_TOKEN,
        rooms=rooms,
    )


@pytest.fixture
async def client(tmp_path: Path, unreachable_kubeconfig: Path) -> AsyncIterator[TestClient]:
    rooms = RoomsConfig(
        livekit_url="ws://127.0.0.1:7880",
        livekit_api_key="devkey",
        livekit_api_secret="secret",
        kubeconfig=unreachable_kubeconfig,
        dispatch_wait_seconds=0,
    )
    async with TestClient(TestServer(create_app(_config(tmp_path, rooms)))) as c:
        yield c


async def _user_token(client: TestClient) -> dict[str, str]:
    resp = await client.post("/admin/users", json={"user_id": "ana", "display_name": "Ana"}, headers=ADMIN)
    assert resp.status == 201
    resp = await client.post("/admin/users/ana/token", headers=ADMIN)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"token", "token_type", "expires_in", "user_id"} and body["token_type"] == "Bearer"
    return {"Authorization": f"Bearer {body['token']}"}


GOOD = {"room_name": "lesson-1", "agent_name": "spanish-tutor"}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "MISSING_TOKEN"),
        ({"Authorization": "Bearer nope"}, "INVALID_TOKEN"),
        ({"Authorization": "Basic abc"}, "MISSING_TOKEN"),
        ({"Authorization": f"Bearer {mint_agent_token(JWT_SECRET, 'tutor', 600)}"}, "WRONG_TOKEN_ROLE"),
        (
            {"Authorization": f"Bearer {mint_learner_token('another-secret-0123456789abcdef01', 'ana', 600)}"},
            "INVALID_TOKEN",
        ),
        ({"Authorization": f"Bearer {mint_learner_token(JWT_SECRET, 'ana', -10)}"}, "TOKEN_EXPIRED"),
    ],
)
async def test_join_and_status_refuse_bad_tokens(client: TestClient, headers: dict[str, str], code: str) -> None:
    for resp in (
        await client.post("/api/v1/rooms/join", json=GOOD, headers=headers),
        await client.get("/api/v1/rooms/lesson-1/agent?agent_name=spanish-tutor", headers=headers),
    ):
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert_error(await resp.json(), code)


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"not json", "INVALID_JSON", "not valid JSON"),
        (b"[1]", "INVALID_JSON", "JSON object"),
        (b"{}", "MISSING_FIELD", "room_name is required"),
        (json.dumps({"agent_name": "spanish-tutor"}).encode(), "MISSING_FIELD", "room_name is required"),
        (json.dumps({"room_name": "lesson-1"}).encode(), "MISSING_FIELD", "agent_name is required"),
        (json.dumps({**GOOD, "room_name": "  "}).encode(), "MISSING_FIELD", "room_name is required"),
        (json.dumps({**GOOD, "room_name": 42}).encode(), "INVALID_FIELD", "room_name must be"),
        (json.dumps({**GOOD, "room_name": "-starts-with-dash"}).encode(), "INVALID_FIELD", "room_name must be"),
        (json.dumps({**GOOD, "room_name": "has space"}).encode(), "INVALID_FIELD", "room_name must be"),
        (json.dumps({**GOOD, "room_name": "../etc"}).encode(), "INVALID_FIELD", "room_name must be"),
        (json.dumps({**GOOD, "room_name": "r" * 129}).encode(), "INVALID_FIELD", "1-128 characters"),
        # Python's `$` matches before a trailing newline; the CRD's CEL rule does not (was a 503).
        (json.dumps({**GOOD, "room_name": "lesson-1\n"}).encode(), "INVALID_FIELD", "room_name must be"),
        (json.dumps({**GOOD, "agent_name": "spanish-tutor\n"}).encode(), "INVALID_FIELD", "DNS label"),
        (json.dumps({**GOOD, "agent_name": "Spanish_Tutor"}).encode(), "INVALID_FIELD", "DNS label"),
        (json.dumps({**GOOD, "agent_name": "a" * 64}).encode(), "INVALID_FIELD", "DNS label"),
        (json.dumps({**GOOD, "agent_name": ["x"]}).encode(), "INVALID_FIELD", "DNS label"),
        (json.dumps({**GOOD, "ttl": 5}).encode(), "INVALID_FIELD", "unknown field(s) in the join request: ttl"),
    ],
)
async def test_join_refuses_bad_bodies_naming_the_field(client: TestClient, body: bytes, code: str, words: str) -> None:
    headers = await _user_token(client)
    resp = await client.post("/api/v1/rooms/join", data=body, headers={**headers, "Content-Type": "application/json"})
    assert resp.status == 400
    got = await resp.json()
    assert_error(got, code)
    assert words in got["error"]["message"]


async def test_status_refuses_bad_room_or_agent(client: TestClient) -> None:
    headers = await _user_token(client)
    resp = await client.get("/api/v1/rooms/lesson-1/agent", headers=headers)
    assert resp.status == 400
    assert_error(await resp.json(), "MISSING_FIELD")
    for path in (
        "/api/v1/rooms/bad%20room/agent?agent_name=spanish-tutor",
        "/api/v1/rooms/lesson-1%0A/agent?agent_name=spanish-tutor",
        "/api/v1/rooms/lesson-1/agent?agent_name=spanish-tutor%0A",
    ):
        resp = await client.get(path, headers=headers)
        assert resp.status == 400, path
        assert_error(await resp.json(), "INVALID_FIELD")


async def test_join_of_an_unknown_user_is_404(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {mint_learner_token(JWT_SECRET, 'nobody', 600)}"}
    resp = await client.post("/api/v1/rooms/join", json=GOOD, headers=headers)
    assert resp.status == 404
    assert_error(await resp.json(), "USER_NOT_FOUND")


async def test_unreachable_kubernetes_is_a_503_that_says_so(client: TestClient) -> None:
    headers = await _user_token(client)
    for resp in (
        await client.post("/api/v1/rooms/join", json=GOOD, headers=headers),
        await client.get("/api/v1/rooms/lesson-1/agent?agent_name=spanish-tutor", headers=headers),
    ):
        assert resp.status == 503 and resp.headers["Retry-After"] == "2"
        body = await resp.json()
        assert_error(body, "KUBERNETES_UNAVAILABLE")
        assert "could not be reached" in body["error"]["message"]
        assert "not-a-real-token" not in json.dumps(body)


async def test_without_rooms_settings_the_routes_say_what_is_missing(tmp_path: Path) -> None:
    async with TestClient(TestServer(create_app(_config(tmp_path, None)))) as c:
        token = {"Authorization": f"Bearer {mint_learner_token(JWT_SECRET, 'ana', 600)}"}
        resp = await c.post("/api/v1/rooms/join", json=GOOD, headers=token)
        assert resp.status == 503
        body = await resp.json()
        assert_error(body, "ROOMS_NOT_CONFIGURED")
        assert "LIVEKIT_URL" in body["error"]["message"]


async def test_admin_token_route_needs_the_admin_and_a_known_user(client: TestClient) -> None:
    resp = await client.post("/admin/users/ana/token")
    assert resp.status == 401
    resp = await client.post("/admin/users/nobody/token", headers=ADMIN)
    assert resp.status == 404
    assert_error(await resp.json(), "USER_NOT_FOUND")
    await client.post("/admin/users", json={"user_id": "ana"}, headers=ADMIN)
    resp = await client.post("/admin/users/ana/token", json={"expires_in": 5}, headers=ADMIN)
    assert resp.status == 400
    assert_error(await resp.json(), "INVALID_FIELD")
