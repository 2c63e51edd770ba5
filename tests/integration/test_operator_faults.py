"""The operator keeps its promise under faults (issue 11), on the real stack.

- a leader whose API server connection is partitioned (a blackholing TCP proxy) steps down before
  the standby takes over: no overlap, and the standby's new dispatch is never robbed as an "orphan";
- an operator restart (and a LiveKit restart while it was down) costs one ListRooms and creates
  nothing; a learner who returns to a closed room is re-bound (RoomReopened);
- SIGKILL 10 times during a burst of 200 objects over 50 rooms: one dispatch per room, none without
  an object, no stuck finalizer;
- a learner rejoining right before ``expiresAt``, 20 times: the object survives every time;
- non-retryable LiveKit errors end in Failed without a hot loop, and the TTL ends never-bound objects.

These tests run their own operators on their own namespaces (``solo-*``) unless they use the session
operator (``lq-*`` namespaces, webhooks on).
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import kubernetes
import pytest
import yaml
from livekit import api

from loqua_devstack.faults import BlackholeProxy
from loqua_devstack.learner import Learner
from loqua_devstack.services import ServiceProcess, operator_process, wait_for
from loqua_devstack.stack import Stack
from tests.integration.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    ad_manifest,
    events_for,
    get_ad,
    live_dispatches,
    make_namespace,
    release_namespace,
    wait_gone,
    wait_phase,
)
from tests.integration.test_operator_dispatch import metric
from tests.integration.test_operator_resilience import SOLO_AGENT, phases

pytestmark = pytest.mark.integration


def figure(name: str, value: object) -> None:
    """Figures the issue asks for, printed (pytest -s) and kept with the test logs."""
    line = f"[figure] {name}: {value}"
    print(line)
    path = Path(os.environ.get("DEVSTACK_DIR", ".devstack")) / "logs" / "tests" / "figures-issue-11.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(f"{dt.datetime.now(dt.UTC).isoformat()} {line}\n")


def solo(
    stack_env: dict[str, str], logs_dir: Path, ns: str, tag: str, kubeconfig: str | None = None, **env: str
) -> ServiceProcess:
    settings = dict(stack_env)
    if kubeconfig:
        settings["KUBECONFIG"] = kubeconfig
    return operator_process(
        settings,
        logs_dir / f"operator-{tag}-{ns}.log",
        namespaces=[ns],
        extra_env={"LEASE_NAMESPACE": ns, "LOG_LEVEL": "INFO", "WEBHOOK_PORT": "0", **env},
    )


def status_code(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def ready_url(proc: ServiceProcess) -> str:
    return proc.health_url.replace("/healthz", "/readyz")


def proxied_kubeconfig(stack_env: dict[str, str], proxy: BlackholeProxy, path: Path) -> str:
    config = yaml.safe_load(Path(stack_env["KUBECONFIG"]).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def create(custom, ns: str, name: str, room: str, agent: str = SOLO_AGENT, **spec: object) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ad_manifest(name, room, agent=agent, **spec))


# ---- 1. leader election that cannot overlap --------------------------------------------------------
async def test_partitioned_leader_steps_down_before_the_standby_acts(
    stack_env, custom, core, logs_dir, lk, crd
) -> None:
    ns = make_namespace(core, "solo")
    apiserver_port = int(stack_env["KUBE_APISERVER_URL"].rsplit(":", 1)[1])
    proxy = BlackholeProxy("127.0.0.1", apiserver_port).start()
    kubeconfig_a = proxied_kubeconfig(stack_env, proxy, logs_dir / f"kubeconfig-proxy-{ns}.yaml")
    # Both sweep every second and remove unreferenced dispatches of their agent name after 1 s: a
    # stale leader that kept acting would delete the new leader's dispatch within seconds.
    common = {
        "LEASE_NAME": "partition",
        "CLEANUP_INTERVAL_MS": "1000",
        "ORPHAN_GRACE_SECONDS": "1",
        "MANAGED_AGENT_NAMES": SOLO_AGENT,
    }
    a = solo(stack_env, logs_dir, ns, "partition-a", kubeconfig_a, POD_NAME="replica-a", **common).start()
    b: ServiceProcess | None = None
    samples: list[tuple[float, bool, bool]] = []
    stop = threading.Event()
    try:
        wait_for(lambda: status_code(ready_url(a)) == 200, "replica A leads", 60)
        b = solo(stack_env, logs_dir, ns, "partition-b", POD_NAME="replica-b", **common).start()
        wait_for(lambda: b.health()[0] == 200, "replica B stands by", 60)
        assert status_code(ready_url(b)) == 503
        for i in range(3):
            create(custom, ns, f"before-{i}", f"part-{ns}-{i}")
        wait_for(lambda: phases(custom, ns)["Dispatched"] == 3, "3 Dispatched by A", 60)

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), status_code(ready_url(a)) == 200, status_code(ready_url(b)) == 200))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proxy.blackhole()
        cut = time.monotonic()
        create(custom, ns, "after", f"part-{ns}-new")  # only B (once it leads) can bind it
        code = a.proc.wait(timeout=60)  # A: not ready, leader 0, stops, exits
        a_exit = time.monotonic()
        obj = wait_phase(custom, ns, "after", "Dispatched", timeout=60)
        time.sleep(5)  # several of A's (former) sweep intervals: nobody robs B's dispatch
        stop.set()
        sampler.join()
        found = await live_dispatches(lk, f"part-{ns}-new", SOLO_AGENT)
        assert [d.id for d in found] == [obj["status"]["dispatchId"]], "the new leader's dispatch was deleted"
        assert code == 1, f"a leader that lost its Lease exits non-zero (got {code}); see {a.log_file}"
        a_last = max(t for t, ra, _ in samples if ra)
        b_first = min(t for t, _, rb in samples if rb)
        both = [t for t, ra, rb in samples if ra and rb]
        figure("partition: overlap window (both replicas ready), s", f"{0.05 * len(both):.2f}")
        figure("partition: A not ready after the cut, s", f"{a_last - cut:.2f}")
        figure("partition: A exited after the cut, s", f"{a_exit - cut:.2f}")
        figure("partition: B ready after the cut, s", f"{b_first - cut:.2f}")
        figure("partition: gap between A's last and B's first ready sample, s", f"{b_first - a_last:.2f}")
        assert not both, f"{len(both)} samples with two leaders"
        assert a_last - cut < 10.5, "the partitioned leader stays ready no longer than the renew deadline"
        assert b_first > a_last
        for i in range(3):
            assert len(await live_dispatches(lk, f"part-{ns}-{i}", SOLO_AGENT)) == 1
        assert "leadership lost" in a.log_text()
    finally:
        stop.set()
        proxy.close()
        a.stop()
        try:
            release_namespace(core, custom, ns)
        finally:
            if b is not None:
                b.stop()


# ---- 3. no restart storm; 2. rooms that come back ---------------------------------------------------
def livekit_calls(proc: ServiceProcess) -> dict[str, float]:
    methods = ("ListRooms", "ListParticipants", "ListDispatch", "CreateRoom", "CreateDispatch", "DeleteDispatch")
    return {m: metric(proc, f'loqua_operator_livekit_requests_total{{method="{m}"}}') for m in methods}


def first_sweep_done(proc: ServiceProcess) -> dict[str, float]:
    """LiveKit calls as soon as the first sweep finished (the next one is an interval away)."""
    wait_for(lambda: proc.health()[0] == 200, "operator serving", 60, 0.05)
    wait_for(lambda: metric(proc, "loqua_operator_sweep_duration_seconds_count") >= 1, "first sweep", 120, 0.05)
    return livekit_calls(proc)


async def test_restart_costs_one_list_rooms_and_creates_nothing(
    stack_env, stack: Stack, custom, core, logs_dir, lk, crd
) -> None:
    n = int(os.environ.get("RESUME_OBJECTS", "30"))
    ns = make_namespace(core, "solo")
    fresh_lk: api.LiveKitAPI | None = None
    rooms = [f"resume-{ns}-{i}" for i in range(n)]
    # Orphans of our agent name older than 1 s are removed: a sweep that ran before the restarted
    # operator had listed every object would see these live dispatches as orphans and delete them.
    env = {
        "LEADER_ELECTION": "false",
        "CLEANUP_INTERVAL_MS": "4000",
        "MANAGED_AGENT_NAMES": SOLO_AGENT,
        "ORPHAN_GRACE_SECONDS": "1",
    }
    op = solo(stack_env, logs_dir, ns, "resume-1", **env).start()
    try:
        op.wait_healthy(timeout=60, body="ok")
        for i, room in enumerate(rooms):
            create(custom, ns, f"ad-{i}", room)
        wait_for(lambda: phases(custom, ns)["Dispatched"] == n, f"{n} Dispatched", 60 + n * 0.2)
        before = {d.id for room in rooms[:3] for d in await live_dispatches(lk, room, SOLO_AGENT)}
        op.stop()

        # Restart with every dispatch live: one ListRooms, nothing created.
        op = solo(stack_env, logs_dir, ns, "resume-2", **env).start()
        calls = first_sweep_done(op)
        figure(f"resume with {n} bound objects, dispatches live: LiveKit calls", calls)
        assert calls["ListRooms"] == 1 and calls["CreateRoom"] == 0 and calls["CreateDispatch"] == 0
        assert calls["ListParticipants"] == 0 and calls["DeleteDispatch"] == 0
        assert metric(op, "loqua_operator_dispatches_created_total") == 0
        sweeps = metric(op, "loqua_operator_sweep_duration_seconds_count")
        wait_for(lambda: metric(op, "loqua_operator_sweep_duration_seconds_count") >= sweeps + 1, "a sweep more", 30)
        assert metric(op, 'loqua_operator_livekit_requests_total{method="DeleteDispatch"}') == 0, "a live one robbed"
        assert {d.id for room in rooms[:3] for d in await live_dispatches(lk, room, SOLO_AGENT)} == before
        op.stop()

        # LiveKit restarts while the operator is down: every room and dispatch is gone, nobody is in
        # any room. The restarted operator creates no room and no dispatch (no agent job waits for nobody).
        stack.stop_part("livekit")
        stack.start_part("livekit")
        # The test's own client may hold a kept-alive connection to the stopped server: a fresh one.
        lk = fresh_lk = api.LiveKitAPI(
            stack_env["LIVEKIT_URL"], stack_env["LIVEKIT_API_KEY"], stack_env["LIVEKIT_API_SECRET"]
        )
        op = solo(stack_env, logs_dir, ns, "resume-3", **env).start()
        calls = first_sweep_done(op)
        figure(f"resume with {n} bound objects after a LiveKit restart: LiveKit calls", calls)
        assert calls["ListRooms"] == 1 and calls["CreateRoom"] == 0 and calls["CreateDispatch"] == 0
        time.sleep(5)  # a sweep later still nothing
        assert metric(op, "loqua_operator_dispatches_created_total") == 0
        assert metric(op, 'loqua_operator_livekit_requests_total{method="CreateRoom"}') == 0
        for room in rooms[:3]:
            assert await live_dispatches(lk, room, SOLO_AGENT) == []

        # A learner returns to one of those rooms: it is re-bound within one sweep (no webhooks here).
        joined = time.monotonic()  # from the start of the join (connect included)
        learner = await Learner(stack_env, rooms[0]).join()
        try:
            obj = wait_for(
                lambda: (
                    (o := get_ad(custom, ns, "ad-0"))
                    and o["status"].get("dispatchId") not in before
                    and o["status"].get("phase") == "Active"
                    and o
                ),
                "ad-0 re-bound",
                30,
                0.1,
            )
            figure("reopen without webhooks: learner join -> re-bound, s", f"{time.monotonic() - joined:.2f}")
            found = await live_dispatches(lk, rooms[0], SOLO_AGENT)
            assert [d.id for d in found] == [obj["status"]["dispatchId"]]
            assert obj["status"]["roomSid"] and obj["status"].get("redispatches", 0) == 0
            assert "RoomReopened" in {e.reason for e in events_for(core, ns, "ad-0")}
            assert metric(op, "loqua_operator_dispatches_created_total") == 1  # that room only
        finally:
            await learner.leave()
    finally:
        op.stop()
        cleanup = solo(stack_env, logs_dir, ns, "resume-cleanup", **env).start()
        try:
            release_namespace(core, custom, ns, timeout=120 + n * 0.3)
        finally:
            cleanup.stop()
            if fresh_lk is not None:
                await fresh_lk.aclose()


async def test_room_closed_by_a_livekit_restart_is_rebound_on_the_learners_return(
    stack_env, stack: Stack, custom, core, namespace, lk, operator
) -> None:
    """Session operator (webhooks on): within about 2 s of participant_joined, a RoomReopened Event."""
    room = f"reopen-{uuid.uuid4().hex[:8]}"
    create(custom, namespace, "a", room, agent="tutor", ttlSeconds=300)
    learner = await Learner(stack_env, room).join()
    try:
        first = wait_phase(custom, namespace, "a", "Active", timeout=20)["status"]
        assert first["roomSid"], "roomSid is recorded at bind"
        await learner.leave()
        stack.stop_part("livekit")
        stack.start_part("livekit")
        joined = time.monotonic()  # from the start of the join (connect included)
        await learner.join()
        obj = wait_for(
            lambda: (
                (o := get_ad(custom, namespace, "a"))
                and o["status"].get("roomSid") not in (None, first["roomSid"])
                and o["status"]["dispatchId"] != first["dispatchId"]
                and o
            ),
            "re-bound to the reopened room",
            20,
            0.05,
        )
        latency = time.monotonic() - joined
        figure("reopen with webhooks: learner join -> re-bound, s", f"{latency:.2f}")
        found = await live_dispatches(lk, room, "tutor")
        assert [d.id for d in found] == [obj["status"]["dispatchId"]]
        assert obj["status"].get("redispatches", 0) == 0, "a closed room is not a dead agent"
        assert "RoomReopened" in {e.reason for e in events_for(core, namespace, "a")}
        assert latency < 2 + 2, "re-bound on the webhook, not a sweep later"  # webhook + ~2 s
    finally:
        await learner.leave()


# ---- 9. SIGKILL during a burst ---------------------------------------------------------------------
async def test_sigkill_ten_times_during_a_burst_of_200_over_50_rooms(
    stack_env, custom, core, logs_dir, lk, crd
) -> None:
    ns = make_namespace(core, "solo")
    env = {"LEADER_ELECTION": "false", "CLEANUP_INTERVAL_MS": "2000"}
    rooms: dict[str, list[str]] = collections.defaultdict(list)
    for i in range(200):
        rooms[f"kill-{ns}-{i % 50}"].append(f"ad-{i}")
    created = threading.Event()
    written = [0]

    def burst() -> None:
        api = kubernetes.client.CustomObjectsApi(core.api_client)
        for i in range(200):
            api.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, ad_manifest(f"ad-{i}", f"kill-{ns}-{i % 50}", agent=SOLO_AGENT)
            )
            written[0] = i + 1
            time.sleep(0.15)  # a burst spread over the kills: ~30 s for 200
        created.set()

    op = solo(stack_env, logs_dir, ns, "kill-0", **env).start()
    writer = threading.Thread(target=burst, daemon=True)
    try:
        op.wait_healthy(timeout=60, body="ok")
        writer.start()
        kills = 0
        during_burst = 0
        while kills < 10:
            time.sleep(1.0 + 0.2 * kills)
            op.kill()
            kills += 1
            during_burst += written[0] < 200
            op = restarted = solo(stack_env, logs_dir, ns, f"kill-{kills}", **env).start()
            wait_for(lambda p=restarted: p.health()[0] == 200, "restarted operator serving", 60, 0.05)
        writer.join(timeout=120)
        assert created.is_set()
        figure("sigkill burst: kills while objects were still being written", f"{during_burst}/10")
        assert during_burst >= 8, "the burst was over before the kills: the test proves little"
        wait_for(lambda: phases(custom, ns)["Dispatched"] == 200, "all 200 Dispatched", 180)
        for room, names in rooms.items():
            found = await live_dispatches(lk, room, SOLO_AGENT)
            assert len(found) == 1, f"room {room}: {len(found)} dispatches"
            for name in names:
                assert get_ad(custom, ns, name)["status"]["dispatchId"] == found[0].id
        release_namespace(core, custom, ns, timeout=180)  # no stuck finalizer
        for room in rooms:
            assert await live_dispatches(lk, room) == [], f"dispatch left without an object in {room}"
    finally:
        op.stop()


# ---- 4. a learner rejoining around expiresAt ---------------------------------------------------------
def parse(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def test_learner_back_before_expiry_keeps_the_object_20_times(stack_env, custom, namespace, lk) -> None:
    room = f"rejoin-{uuid.uuid4().hex[:8]}"
    create(custom, namespace, "a", room, agent="tutor", ttlSeconds=4)
    learner = await Learner(stack_env, room).join()
    back_in_time = survived = 0
    margins = []
    lead = 1.2  # seconds before expiresAt the join starts

    def active_again() -> dict | None:
        obj = get_ad(custom, namespace, "a")
        if obj is None:
            create(custom, namespace, "a", room, agent="tutor", ttlSeconds=4)
            return None
        active = obj["status"].get("phase") == "Active" and not obj["metadata"].get("deletionTimestamp")
        return obj if active else None

    try:
        wait_phase(custom, namespace, "a", "Active", timeout=20)
        for _ in range(20):
            await learner.leave()
            idle = wait_for(
                lambda: (o := get_ad(custom, namespace, "a")) and o["status"].get("expiresAt") and o,
                "Idle with expiresAt",
                20,
                0.05,
            )
            expires = parse(idle["status"]["expiresAt"])
            time.sleep(max(0.0, expires - lead - time.time()))
            started = time.time()
            await learner.join()
            margin = expires - time.time()
            margins.append(margin)
            # Aim to be back ~0.8 s before expiresAt however long a join takes on this machine (a
            # loaded 2-core CI box can take well over a second), never earlier than 3 s before it.
            lead = min(3.0, max(lead, time.time() - started + 0.8))
            if margin <= 0:
                # Not back in time: this try says nothing, and the object may rightly have expired
                # (deleted at expiresAt); start the next try from a fresh object.
                wait_for(active_again, "object a Active again (recreated if it expired)", 30)
                continue
            back_in_time += 1
            time.sleep(max(0.0, expires + 3 - time.time()))  # past expiresAt and a sweep or two
            obj = get_ad(custom, namespace, "a")
            if obj is not None and obj["status"].get("phase") == "Active" and not obj["status"].get("expiresAt"):
                survived += 1
            else:  # lost although the learner was back: counted below; go on to show how often
                wait_for(active_again, "object a Active again (recreated if it expired)", 30)
        figure("rejoin before expiresAt: survived / back in time / tries", f"{survived}/{back_in_time}/20")
        figure(
            "rejoin: seconds before expiresAt the learner was back (min, max)",
            f"{min(margins):.2f}, {max(margins):.2f}",
        )
        assert back_in_time >= 15, f"the learner was back in time only {back_in_time} of 20 times: {margins}"
        assert survived == back_in_time
        assert len(await live_dispatches(lk, room, "tutor")) == 1
    finally:
        await learner.leave()


# ---- 5. writes only on change ---------------------------------------------------------------------
def test_quiet_rooms_cost_no_status_writes(custom, namespace, operator) -> None:
    for i in range(4):
        create(custom, namespace, f"q-{i}", f"quiet-{uuid.uuid4().hex[:8]}", agent="tutor", ttlSeconds=600)
    wait_for(
        lambda: all((get_ad(custom, namespace, f"q-{i}") or {}).get("status", {}).get("expiresAt") for i in range(4)),
        "TTL set on all four",
        30,
    )
    sweeps = metric(operator, "loqua_operator_sweep_duration_seconds_count")
    writes = metric(operator, 'loqua_operator_status_updates_total{source="sweep"}')
    wait_for(lambda: metric(operator, "loqua_operator_sweep_duration_seconds_count") >= sweeps + 6, "6 sweeps", 60)
    done = metric(operator, "loqua_operator_sweep_duration_seconds_count") - sweeps
    added = metric(operator, 'loqua_operator_status_updates_total{source="sweep"}') - writes
    figure(
        "steady state (quiet rooms, webhooks on): sweep status writes per sweep",
        f"{added / done:.2f} ({added:.0f} in {done:.0f} sweeps; last sweep's loqua_operator_sweep_api_writes "
        f"{metric(operator, 'loqua_operator_sweep_api_writes'):.0f})",
    )
    assert added == 0
    assert metric(operator, "loqua_operator_sweep_api_writes") == 0


def object_writes(custom) -> float:  # type: ignore[no-untyped-def]
    """PATCH/UPDATE requests on AgentDispatch objects (status included) the API server has served."""
    client = custom.api_client
    method, url, headers, _, _ = client.param_serialize(
        method="GET", resource_path="/metrics", auth_settings=["BearerToken"]
    )
    resp = client.call_api(method, url, headers)
    resp.read()
    text = resp.data.decode()
    total = 0.0
    for line in text.splitlines():
        ours = line.startswith("apiserver_request_total{") and f'resource="{PLURAL}"' in line
        if ours and ('verb="PATCH"' in line or 'verb="UPDATE"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_binding_costs_two_writes_and_leaves_no_kopf_annotations(custom, namespace, operator) -> None:
    """The finalizer and one status write per object: the first sweep after it adds nothing (issue 15)."""
    before = object_writes(custom)
    names = [f"w-{i}" for i in range(20)]
    for name in names:
        create(custom, namespace, name, f"writes-{uuid.uuid4().hex[:8]}", agent="tutor", ttlSeconds=600)
    for name in names:
        wait_phase(custom, namespace, name, "Dispatched")
    sweeps = metric(operator, "loqua_operator_sweep_duration_seconds_count")
    wait_for(lambda: metric(operator, "loqua_operator_sweep_duration_seconds_count") >= sweeps + 2, "2 sweeps", 60)
    per_object = (object_writes(custom) - before) / len(names)
    figure("Kubernetes writes per bound object (finalizer + status)", f"{per_object:.2f}")
    # Other tests' objects are quiet by now; a stray write of theirs must not fail this one.
    assert 2.0 <= per_object <= 2.2, per_object
    for name in names:
        obj = get_ad(custom, namespace, name)
        assert obj["status"]["expiresAt"] and obj["status"]["participants"] == 0  # written with the bind
        assert not [a for a in obj["metadata"].get("annotations") or {} if a.startswith("agents.loqua.app/")]


# ---- 7. failures that end --------------------------------------------------------------------------
async def test_permission_denied_fails_once_and_the_ttl_ends_it(stack_env, custom, core, logs_dir, crd) -> None:
    """A key LiveKit does not accept: Failed with the reason, no retry storm, gone after the TTL."""
    ns = make_namespace(core, "solo")
    env = {
        "LEADER_ELECTION": "false",
        "CLEANUP_INTERVAL_MS": "1000",
        "LIVEKIT_API_SECRET": "a-wrong-secret-that-livekit-refuses-0000000000",
    }
    op = solo(stack_env, logs_dir, ns, "denied", **env).start()
    try:
        op.wait_healthy(timeout=60, body="ok")
        create(custom, ns, "a", f"denied-{ns}", ttlSeconds=8)
        obj = wait_phase(custom, ns, "a", "Failed", timeout=30)
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert (
            ready["status"] == "False" and ready["reason"].startswith("LiveKit") and ready["reason"] != "LiveKitError"
        )
        calls = metric(op, 'loqua_operator_livekit_requests_total{method="CreateRoom"}')
        time.sleep(4)
        assert metric(op, 'loqua_operator_livekit_requests_total{method="CreateRoom"}') == calls, "no hot retry loop"
        figure("permission denied: CreateRoom calls before Failed", calls)
        wait_gone(custom, ns, "a", timeout=8 + 15)  # the TTL ends an object that never bound
        assert "Expired" in {e.reason for e in events_for(core, ns, "a")}
    finally:
        try:
            release_namespace(core, custom, ns)
        finally:
            op.stop()


# ---- 6. liveness that fails when the operator is stuck -------------------------------------------
def test_liveness_fails_when_the_watch_stream_goes_silent(stack_env, custom, core, logs_dir, crd) -> None:
    """The API server stops answering (a blackhole, not a refusal): the watch goes silent and /healthz
    fails within the bound, naming the stream; the kubelet would restart the pod."""
    ns = make_namespace(core, "solo")
    stall = 45  # short, so it fires before kopf gives up on its own API retries and exits
    apiserver_port = int(stack_env["KUBE_APISERVER_URL"].rsplit(":", 1)[1])
    proxy = BlackholeProxy("127.0.0.1", apiserver_port).start()
    kubeconfig = proxied_kubeconfig(stack_env, proxy, logs_dir / f"kubeconfig-proxy-{ns}.yaml")
    op = solo(
        stack_env,
        logs_dir,
        ns,
        "liveness",
        kubeconfig,
        LEADER_ELECTION="false",
        LIVENESS_WATCH_STALL_SECONDS=str(stall),
    ).start()
    try:
        op.wait_healthy(timeout=60, body="ok")
        create(custom, ns, "a", f"live-{ns}")
        wait_phase(custom, ns, "a", "Dispatched", timeout=60)  # its watch runs (it saw the object)
        proxy.blackhole()
        cut = time.monotonic()
        seen: list[tuple[float, int, str]] = []
        while time.monotonic() - cut < stall + 60 and op.alive():
            code, body = op.health()
            if not seen or seen[-1][1:] != (code, body):
                seen.append((round(time.monotonic() - cut, 1), code, body))
            if code == 503:
                break
            time.sleep(0.5)
        figure("watch silent: /healthz after the cut (s, code, body)", seen)
        failing = [(t, body) for t, code, body in seen if code == 503]
        assert failing, f"/healthz never failed; exit code {op.proc.poll()}; {seen}"
        assert "watch stream" in failing[0][1], failing
        assert failing[0][0] <= stall + 5, "liveness failed later than its bound"
    finally:
        proxy.close()
        op.stop()
        cleanup = solo(stack_env, logs_dir, ns, "liveness-cleanup", LEADER_ELECTION="false").start()
        try:
            release_namespace(core, custom, ns)
        finally:
            cleanup.stop()


# ---- 4. two objects sharing a room do not race their re-dispatches --------------------------------
async def test_shared_room_redispatches_once_for_both_objects(stack_env, custom, namespace, lk) -> None:
    """Two objects for (room, ghost); no worker runs `ghost`, so both see no agent after the grace.
    The room never holds two dispatches, and both objects end on the one live dispatch."""
    room = f"shared-{uuid.uuid4().hex[:8]}"
    for name in ("a", "b"):
        create(custom, namespace, name, room, agent="ghost", ttlSeconds=600)
    wait_for(
        lambda: all((get_ad(custom, namespace, n) or {}).get("status", {}).get("dispatchId") for n in "ab"), "bound", 30
    )
    learner = await Learner(stack_env, room).join()
    try:
        started, most = time.monotonic(), 0
        while time.monotonic() - started < 20:
            most = max(most, len(await live_dispatches(lk, room, "ghost")))
            time.sleep(0.2)
        redispatched = lambda: all(  # noqa: E731
            (get_ad(custom, namespace, n) or {}).get("status", {}).get("redispatches", 0) >= 1 for n in "ab"
        )
        wait_for(redispatched, "both objects re-dispatched at least once", 30)

    finally:
        await learner.leave()
    assert most == 1, "never two dispatches of the agent at once"

    async def settled() -> bool:
        ids = {get_ad(custom, namespace, n)["status"]["dispatchId"] for n in "ab"}
        return ids == {d.id for d in await live_dispatches(lk, room, "ghost")} and len(ids) == 1

    deadline = time.monotonic() + 30
    while not await settled():
        assert time.monotonic() < deadline, "the two objects do not end on the one live dispatch"
        time.sleep(0.5)
