"""The tutor's safety nets under real faults (issue 16), no mocks: a dedicated `loqua-tutor start`
with a quick breaker (threshold 2, reset 2 s), progress every second and no client retries, real
rtc learners, livekit-server and the reference Loqua API's ``/admin/faults``.

- a half-open breaker trial hung by a latency fault and cancelled at session end does not lose the
  final progress or the session record;
- a burst of 401s does not turn into a burst of token exchanges, and the session carries on;
- learners with hostile attributes end the job cleanly, with a metric, and forge no log line;
- another participant of the room cannot call the learner's tutor tools over RPC.

Fault rules on shared paths are removed by id in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import api, rtc

from loqua_devstack.learner import Learner
from loqua_devstack.services import ServiceProcess
from tests.e2e.conftest import Cleanup, WorkerMetrics, running_tutor, until
from tests.e2e.test_tutor_e2e import (
    PROGRESS_PATH,
    REQUESTS,
    Faults,
    Session,
    agents_in_room,
    join_until_refused,
    new_room,
    open_session,
    user_records,
    with_session,
)

pytestmark = pytest.mark.e2e

BREAKER = "loqua_tutor_circuit_breaker_state"
FINALIZE_TIMEOUT = 30


@pytest.fixture(scope="module")
def nets_agent_name() -> str:
    return f"nets-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def nets_worker(stack_env: dict[str, str], logs_dir: Path, nets_agent_name: str) -> Iterator[ServiceProcess]:
    env = {
        "JOB_EXECUTOR": "process",
        "BREAKER_FAILURE_THRESHOLD": "2",
        "BREAKER_RESET_SECONDS": "2",
        "PROGRESS_INTERVAL_SECONDS": "1",
        "API_MAX_RETRIES": "0",
        "FINALIZE_TIMEOUT_SECONDS": str(FINALIZE_TIMEOUT),
        "PARTICIPANT_WAIT_TIMEOUT_SECONDS": "20",
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "text",
    }
    with running_tutor(stack_env, logs_dir / f"tutor-{nets_agent_name}.log", nets_agent_name, env) as proc:
        yield proc


@pytest.fixture(scope="module")
def nets_metrics(nets_worker: ServiceProcess) -> WorkerMetrics:
    return WorkerMetrics(nets_worker.metrics_url)


# ---- 1. a hung half-open trial, cancelled at session end -----------------------------------------


async def test_hung_breaker_trial_at_session_end_loses_nothing(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    nets_agent_name: str,
    nets_worker: ServiceProcess,
    nets_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    faults = Faults(admin)
    s = await open_session(stack_env, lk, admin, nets_agent_name, cleanup.rooms, cleanup.learners, "hung-trial")
    lost_before = await nets_metrics.value("loqua_tutor_session_records_total", result="lost")
    try:
        assert (await s.tool("new_word", word="perro", translation="dog", language="es"))["ok"]
        await s.wait_progress(s.driven.progress())
        # Progress 503s open the breaker (threshold 2, one attempt per update).
        await faults.add(status=503, path_prefix=PROGRESS_PATH)
        words = iter(f"palabra{i}" for i in range(100))

        async def breaker_is(state: int) -> bool:
            # A change each time: the progress loop only sends when something changed.
            await s.tool("new_word", word=next(words), translation="word", language="es")
            return await nets_metrics.value(BREAKER) == state

        await until(lambda: breaker_is(2), "the breaker to open on progress 503s", 30, 0.5)
        # The API hangs instead (latency); the 503s stop. After BREAKER_RESET_SECONDS the next update
        # is the half-open trial, and it hangs.
        hang = await faults.add(latency_ms=60_000, path_prefix=PROGRESS_PATH)
        for rule_id in list(faults.ids):
            if rule_id != hang:
                await faults.remove(rule_id)
        await until(lambda: breaker_is(1), "the half-open trial to be in flight", 30, 0.5)
        await asyncio.sleep(1.0)
        assert await nets_metrics.value(BREAKER) == 1  # still hanging: the slot is taken

        # The session ends while the trial is in flight; the API is healthy half a second later.
        ended = time.monotonic()
        await s.end()
        await asyncio.sleep(0.5)
        await faults.remove(hang)
        healthy = time.monotonic()
        seen: dict[str, float] = {}

        async def delivered() -> dict[str, Any] | None:
            rec = await user_records(admin, s.user_id)
            if any(x["session_id"] == s.session_id for x in rec["sessions"]):
                seen.setdefault("record", time.monotonic())
            if s.progress_of_session(rec, "completed"):
                seen.setdefault("progress", time.monotonic())
            return rec if len(seen) == 2 else None

        final = await until(delivered, "the final progress and session record", FINALIZE_TIMEOUT + 15, 0.2)
        took = max(seen.values()) - ended
        await until(lambda: _agent_gone(lk, s.room), "the agent to leave", 30, 0.5)
    finally:
        await faults.clear()
    sessions = [x for x in final["sessions"] if x["session_id"] == s.session_id]
    assert len(sessions) == 1, sessions
    completed = s.progress_of_session(final, "completed")
    assert len(completed) == 1, completed
    assert completed[0]["data"]["progress"]["words_learned"] == len(s.driven.vocabulary)
    assert len(sessions[0]["new_vocabulary"]) == len(s.driven.vocabulary)
    assert took < FINALIZE_TIMEOUT + 5
    print(
        f"hung half-open trial cancelled at session end: API healthy {healthy - ended:.1f} s after the end; "
        f"record stored {seen['record'] - healthy:+.1f} s, final progress {seen['progress'] - healthy:+.1f} s "
        f"after healthy (FINALIZE_TIMEOUT_SECONDS={FINALIZE_TIMEOUT}, API_TIMEOUT_SECONDS=10)"
    )
    assert await nets_metrics.value("loqua_tutor_session_records_total", result="lost") == lost_before
    assert "session record LOST" not in nets_worker.log_text()


async def _agent_gone(lk: api.LiveKitAPI, room: str) -> bool:
    return not await agents_in_room(lk, room)


# ---- 2. a burst of 401s ------------------------------------------------------------------------------


async def test_burst_of_401s_shares_token_exchanges(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    nets_agent_name: str,
    nets_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    faults = Faults(admin)
    s = await open_session(stack_env, lk, admin, nets_agent_name, cleanup.rooms, cleanup.learners, "401s")
    await asyncio.sleep(11)  # the user token is no longer brand new: a 401 may now trigger an exchange
    exchanges_before = _exchanges((await s.records())["audit"], stack_env["AGENT_ID"])
    assert exchanges_before == 1
    try:
        burst = await faults.add(status=401, count=12, path_prefix=PROGRESS_PATH)
        words = iter(f"mot{i}" for i in range(200))

        async def used_up() -> bool:
            await s.tool("new_word", word=next(words), translation="word", language="es")
            return not await faults.active(burst)

        await until(used_up, "the burst of 401s to be used up", 60, 0.3)
    finally:
        await faults.clear()
    assert (await s.tool("new_word", word="fin", translation="end", language="es"))["ok"]
    await s.wait_progress(s.driven.progress())  # the session carries on with a valid token
    exchanges = _exchanges((await s.records())["audit"], stack_env["AGENT_ID"]) - exchanges_before
    print(f"12 x 401 on the progress path: {exchanges} token exchange(s)")
    assert exchanges <= 2, f"{exchanges} token exchanges for one burst of 401s"
    await s.end()
    rec = await until(
        lambda: with_session(admin, s.user_id, s.session_id), "the session record", FINALIZE_TIMEOUT + 15, 0.5
    )
    assert len([x for x in rec["sessions"] if x["session_id"] == s.session_id]) == 1


SESSIONS_PATH = "/api/v1/agent/sessions"
USER_TOKEN_PATH = "/api/v1/agent/user-token"


async def test_concurrent_401s_at_session_end_share_one_exchange(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    nets_agent_name: str,
    nets_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    """The final progress and the session record go out side by side; both meet a 401 for the same
    token at once. A slowed exchange (1 s) keeps the first exchange in flight while the second 401
    lands: one exchange serves both, and both are then delivered once."""
    faults = Faults(admin)
    s = await open_session(stack_env, lk, admin, nets_agent_name, cleanup.rooms, cleanup.learners, "401-pair")
    assert (await s.tool("new_word", word="dos", translation="two", language="es"))["ok"]
    await s.wait_progress(s.driven.progress())
    await asyncio.sleep(11)  # the token is no longer brand new: a 401 now asks for an exchange
    exchanges_before = _exchanges((await s.records())["audit"], stack_env["AGENT_ID"])
    refused_before = [
        await nets_metrics.value(REQUESTS, endpoint=path, status="401") for path in (PROGRESS_PATH, SESSIONS_PATH)
    ]
    try:
        await faults.add(latency_ms=1000, path_prefix=USER_TOKEN_PATH)
        for path in (PROGRESS_PATH, SESSIONS_PATH):
            await faults.add(status=401, count=1, path_prefix=path)
        await s.end()
        rec = await until(
            lambda: with_session(admin, s.user_id, s.session_id), "the session record", FINALIZE_TIMEOUT + 15, 0.5
        )
        rec = await until(lambda: _with_completed(admin, s), "the final progress", FINALIZE_TIMEOUT + 15, 0.5)
    finally:
        await faults.clear()
    refused = [
        await nets_metrics.value(REQUESTS, endpoint=path, status="401") - before
        for path, before in zip((PROGRESS_PATH, SESSIONS_PATH), refused_before, strict=True)
    ]
    exchanges = _exchanges(rec["audit"], stack_env["AGENT_ID"]) - exchanges_before
    print(f"2 concurrent 401s at session end (progress, record: {refused}): {exchanges} token exchange")
    assert refused == [1, 1], refused
    assert exchanges == 1, f"{exchanges} token exchanges for two concurrent 401s"
    assert len([x for x in rec["sessions"] if x["session_id"] == s.session_id]) == 1
    assert len(s.progress_of_session(rec, "completed")) == 1


async def _with_completed(admin: httpx.AsyncClient, s: Session) -> dict[str, Any] | None:
    rec = await user_records(admin, s.user_id)
    return rec if s.progress_of_session(rec, "completed") else None


def _exchanges(audit: list[dict[str, Any]], agent_id: str) -> int:
    return sum(1 for a in audit if a["action"] == "user_token" and a["agent_id"] == agent_id)


# ---- 3. any Retry-After ------------------------------------------------------------------------------

GARBAGE_RETRY_AFTER = ["\u00b2", "soon", "1.5", "-3", "Wed, 99 Foo 2015 07:28:10 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"]


async def test_any_retry_after_value_is_survived(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    nets_agent_name: str,
    nets_worker: ServiceProcess,
    nets_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    """503 and 429 answers with a Retry-After that is neither delta-seconds nor a future HTTP date:
    the worker ignores the header and carries on (a '²' used to raise out of the client and end the
    session's progress loop for good)."""
    faults = Faults(admin)
    s = await open_session(stack_env, lk, admin, nets_agent_name, cleanup.rooms, cleanup.learners, "retry-after")
    words = iter(f"w{i}" for i in range(300))
    try:
        for status in (503, 429):
            for value in GARBAGE_RETRY_AFTER:
                rule = await faults.add(status=status, count=1, retry_after=value, path_prefix=PROGRESS_PATH)

                async def used_up(rule_id: int = rule) -> bool:
                    await s.tool("new_word", word=next(words), translation="w", language="es")
                    return not await faults.active(rule_id)

                await until(used_up, f"the {status} with Retry-After {value!r} to be met", 30, 0.3)
    finally:
        await faults.clear()
    assert (await s.tool("new_word", word="final", translation="w", language="es"))["ok"]
    await s.wait_progress(s.driven.progress())  # the progress loop is alive and up to date
    log = nets_worker.log_text()
    assert "Traceback" not in log and "ValueError" not in log, log[-3000:]
    print(f"503 and 429 with each Retry-After of {GARBAGE_RETRY_AFTER!r}: ignored, session alive")
    await s.end()
    rec = await until(
        lambda: with_session(admin, s.user_id, s.session_id), "the session record", FINALIZE_TIMEOUT + 15, 0.5
    )
    assert len([x for x in rec["sessions"] if x["session_id"] == s.session_id]) == 1


# ---- 4. untrusted attributes, RPC callers ------------------------------------------------------------

HOSTILE = {
    "dot-dot": {"user_id": ".."},
    "traversal": {"user_id": "../admin"},
    "separator": {"user_id": "a/b"},
    "backslash": {"user_id": "a\\b"},
    "forged-log-line": {"user_id": "u1\n[2026-01-01T00:00:00.000Z] [INFO] [x] [y] [z] forged"},
    "control-chars": {"user_id": "u1\x1b[31m\x00"},
    "too-long": {"user_id": "u" * 300},
    "bad-session-id": {"user_id": "ok-user", "sessionId": "../../sessions\r\nforged"},
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_attributes_end_the_job_cleanly(
    case: str,
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    nets_agent_name: str,
    nets_worker: ServiceProcess,
    nets_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    attrs = dict(HOSTILE[case])
    attribute = "sessionId" if "sessionId" in attrs else "user_id"
    invalid_before = await nets_metrics.value("loqua_tutor_invalid_attributes_total")
    labelled_before = await nets_metrics.value("loqua_tutor_invalid_attributes_total", attribute=attribute)
    started_before = await nets_metrics.value("loqua_tutor_sessions_started_total")
    room = await new_room(lk, cleanup.rooms, nets_agent_name)
    user_id = attrs.pop("user_id")
    learner = Learner(stack_env, room, user_id=user_id, display_name="Mallory\n[forged]", **attrs)
    cleanup.learners.append(learner)
    log_before = len(nets_worker.log_text())
    await join_until_refused(lk, learner, nets_metrics, "loqua_tutor_invalid_attributes_total", invalid_before)
    assert await nets_metrics.value("loqua_tutor_sessions_started_total") == started_before  # no session
    log = nets_worker.log_text()[log_before:]
    assert "invalid" in log and f"participant {learner.identity}" in log, log[-2000:]
    assert "forged" not in log.replace("\\n[forged]", ""), "a hostile value reached the log"
    assert not any(line.startswith("[2026-01-01T00:00:00.000Z]") for line in log.splitlines()), "a forged log line"
    assert "\x1b" not in log and "\x00" not in log
    assert nets_worker.alive()
    bumped = await nets_metrics.value("loqua_tutor_invalid_attributes_total", attribute=attribute) - labelled_before
    assert bumped == 1, bumped
    print(f"hostile {case}: job ended, loqua_tutor_invalid_attributes_total{{attribute={attribute!r}}} +{bumped:.0f}")
    # Nothing was asked of the API for such a user: no request carried the hostile id.
    if case == "bad-session-id":
        resp = await admin.get("/admin/users/ok-user/records")
        assert resp.status_code == 404 or not resp.json()["audit"]


FORGED_LINE = "[2026-01-01T00:00:00.000Z] [ERROR] [x] [y] [z] forged"


async def test_a_hostile_identity_forges_no_log_line(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    nets_agent_name: str,
    nets_worker: ServiceProcess,
    nets_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    """The participant's identity is logged (it names who was refused): a newline, a carriage return
    and an ANSI escape in it come out escaped, on the one line of the record, never as a line of
    their own."""
    invalid_before = await nets_metrics.value("loqua_tutor_invalid_attributes_total")
    room = await new_room(lk, cleanup.rooms, nets_agent_name)
    learner = Learner(stack_env, room, user_id="../context")
    learner.identity = f"mallory-{uuid.uuid4().hex[:6]}\n{FORGED_LINE}\r\x1b[2K"
    cleanup.learners.append(learner)
    log_before = len(nets_worker.log_text())
    await join_until_refused(lk, learner, nets_metrics, "loqua_tutor_invalid_attributes_total", invalid_before)
    log = nets_worker.log_text()[log_before:]
    escaped = learner.identity.replace("\n", "\\n").replace("\r", "\\r").replace("\x1b", "\\x1b")
    line = next((x for x in log.splitlines() if escaped in x), None)
    assert line is not None and "invalid user_id" in line, log[-2000:]
    assert not any(x.startswith(FORGED_LINE[:26]) for x in log.splitlines()), "a forged log line"
    assert "\x1b" not in log and "\r" not in log
    print(f"hostile identity refused on one line: {line[:160]}")


async def test_only_the_learner_may_call_the_tools(
    stack_env: dict[str, str],
    lk: api.LiveKitAPI,
    admin: httpx.AsyncClient,
    nets_agent_name: str,
    nets_metrics: WorkerMetrics,
    cleanup: Cleanup,
) -> None:
    s = await open_session(stack_env, lk, admin, nets_agent_name, cleanup.rooms, cleanup.learners, "rpc")
    assert (await s.tool("new_word", word="uno", translation="one", language="es"))["ok"]
    intruders = [
        Learner(stack_env, s.room, user_id=f"intruder-{uuid.uuid4().hex[:6]}", display_name="Intruder"),
        Learner(stack_env, s.room, user_id=s.user_id, sessionId=s.session_id),  # even claiming the learner's ids
    ]
    rejected_before = await nets_metrics.value("loqua_tutor_rpc_rejected_total", reason="not_learner")
    for intruder in intruders:
        cleanup.learners.append(intruder)
        await intruder.join()
        assert intruder.room is not None
        with pytest.raises(rtc.RpcError) as info:
            await intruder.room.local_participant.perform_rpc(
                destination_identity=s.agent_identity,
                method="tutor.tool",
                payload=json.dumps(
                    {"tool": "new_word", "args": {"word": "intruso", "translation": "x", "language": "es"}}
                ),
                response_timeout=15,
            )
        assert "learner" in info.value.message, info.value.message
        await intruder.leave()
    rejected = await nets_metrics.value("loqua_tutor_rpc_rejected_total", reason="not_learner") - rejected_before
    assert rejected >= 2, rejected
    print(f"tutor.tool RPC from {len(intruders)} other participants: RpcError 403, rpc_rejected +{rejected:.0f}")
    state = (await s.tool("state"))["result"]
    assert [v["word"] for v in state["vocabulary"]] == ["uno"], state
    await s.end()
    rec = await until(
        lambda: with_session(admin, s.user_id, s.session_id), "the session record", FINALIZE_TIMEOUT + 15, 0.5
    )
    record = next(x for x in rec["sessions"] if x["session_id"] == s.session_id)
    assert [v["word"] for v in record["new_vocabulary"]] == ["uno"], record
