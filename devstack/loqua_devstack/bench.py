"""`make bench`: figures against baselines measured in the same run, printed as one markdown table.

Each figure pairs what the product does with the naive or raw alternative on the same local stack,
so machine noise affects both sides alike; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import kubernetes
from livekit import api

from loqua_devstack import bench_readings as readings
from loqua_devstack.learner import Learner
from loqua_devstack.services import ServiceProcess, kubectl_env, operator_process, wait_for
from loqua_devstack.stack import Stack, devstack_dir, quiet_dev_secret_warning

GROUP, VERSION, PLURAL = "agents.loqua.app", "v1alpha1", "agentdispatches"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    figure: str
    ours: str
    baseline: str
    ratio: str
    note: str = ""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.0f}s] {msg}", file=sys.stderr, flush=True)


def metrics_text(proc: ServiceProcess) -> str:
    """A process's /metrics page."""
    import urllib.request

    with urllib.request.urlopen(proc.metrics_url, timeout=10) as resp:
        return resp.read().decode()


async def delete_rooms(lk: api.LiveKitAPI, names: list[str]) -> None:
    """Delete LiveKit rooms 16 at a time (clean-up between figures; never timed)."""
    limit = asyncio.Semaphore(16)

    async def drop(name: str) -> None:
        async with limit:
            await lk.room.delete_room(api.DeleteRoomRequest(room=name))

    await asyncio.gather(*(drop(n) for n in names))


class Bench:
    def __init__(self, env: dict[str, str], quick: bool) -> None:
        self.env = env
        self.quick = quick
        self.kube = kubernetes.config.new_client_from_config(config_file=env["KUBECONFIG"])
        self.custom = kubernetes.client.CustomObjectsApi(self.kube)
        self.core = kubernetes.client.CoreV1Api(self.kube)
        self.logs = Path(env["DEVSTACK_DIR"]) / "logs" / "bench"
        self.rows: list[Row] = []
        self.curve = ""  # the scale part's own table, printed after the main one
        self.kubectl_env = kubectl_env(env)

    def lk(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(self.env["LIVEKIT_URL"], self.env["LIVEKIT_API_KEY"], self.env["LIVEKIT_API_SECRET"])

    # ---- helpers ---------------------------------------------------------------------------------
    def namespace(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def cleanup(self, ns: str) -> None:
        self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        wait_for(
            lambda: not self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"],
            f"objects in {ns} released",
            600,
            interval=1,
        )
        self.core.delete_namespace(ns)

    def discard(self, ns: str, rooms_prefix: str) -> None:
        """Drop a namespace of objects fast (for figures that do not measure cleanup): strip the
        finalizers with the operator stopped, delete the namespace and the LiveKit rooms."""
        from concurrent.futures import ThreadPoolExecutor

        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]

        def strip(item: dict) -> None:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, item["metadata"]["name"], {"metadata": {"finalizers": None}}
            )

        if len(items) >= 1000:
            say(f"  stripping the finalizers of {len(items)} objects in {ns}")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(strip, items))
        self.core.delete_namespace(ns)

        async def drop_rooms() -> None:
            lk = self.lk()
            try:
                rooms = (await lk.room.list_rooms(api.ListRoomsRequest())).rooms
                await delete_rooms(lk, [r.name for r in rooms if r.name.startswith(rooms_prefix)])
            finally:
                await lk.aclose()

        asyncio.run(drop_rooms())

    def operator_unstarted(self, ns: str, tag: str, **env: str) -> ServiceProcess:
        return operator_process(
            self.env,
            self.logs / f"operator-{tag}.log",
            namespaces=[ns],
            extra_env={"LEASE_NAME": f"bench-{tag}", "LEASE_NAMESPACE": ns, "LOG_LEVEL": "WARNING", **env},
        )

    def operator(self, ns: str, tag: str, **env: str) -> ServiceProcess:
        proc = self.operator_unstarted(ns, tag, **env).start()
        proc.wait_healthy(timeout=60, body="ok")
        return proc

    def create(self, ns: str, name: str, room: str, agent: str = "bench-tutor", **spec: object) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentDispatch",
            "metadata": {"name": name},
            "spec": {"room": room, "agentName": agent, **spec},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    def delete_and_wait(self, ns: str, name: str, timeout: float = 60) -> None:
        """Delete one object and wait until it is gone (its finalizer done)."""
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

        def gone() -> bool:
            try:
                self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            except kubernetes.client.ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, f"{ns}/{name} deleted", timeout, interval=0.05)

    def status(self, ns: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}

    def phases(self, ns: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
            phase = (item.get("status") or {}).get("phase", "none")
            out[phase] = out.get(phase, 0) + 1
        return out

    def metric(self, proc: ServiceProcess, name: str) -> float:
        """The operator's unlabelled series ``name``; NaN while it does not exist."""
        found = [v for n, _, v in readings.samples(metrics_text(proc), name) if n == name]
        return sum(found) if found else float("nan")

    async def api_client_figure(self) -> None:
        """The tutor's API client (pooled, retries, breaker, metrics) against a bare httpx call."""
        import httpx

        from loqua_tutor.api_client import LoquaApiClient
        from loqua_tutor.breaker import CircuitBreaker

        n = 100 if self.quick else 300
        say(f"API client overhead: {n} user-token calls through LoquaApiClient and through bare httpx")
        base = self.env["LOQUA_API_URL"]
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            user = await http.post(
                "/admin/users",
                json={"email": "bench@example.com", "display_name": "Bench"},
                headers={"Authorization": f"Bearer {self.env['LOQUA_ADMIN_TOKEN']}"},
            )
            user.raise_for_status()
            user_id = user.json()["user_id"]
            headers = {
                "Authorization": f"Bearer {self.env['AGENT_JWT_TOKEN']}",
                "X-Agent-ID": self.env["AGENT_ID"],
                "Content-Type": "application/json",
            }
            body = {"room_name": "bench", "user_id": user_id, "agent_id": self.env["AGENT_ID"]}
            client = LoquaApiClient(
                base, agent_id=self.env["AGENT_ID"], agent_token=self.env["AGENT_JWT_TOKEN"], breaker=CircuitBreaker()
            )
            bare_t, ours_t = [], []
            try:
                for _ in range(10):  # warm both connection pools
                    (await http.post("/api/v1/agent/user-token", json=body, headers=headers)).raise_for_status()
                    await client.request_user_token(room_name="bench", user_id=user_id)
                for _ in range(n):  # interleaved, so drift in the server affects both alike
                    t0 = time.perf_counter()
                    (await http.post("/api/v1/agent/user-token", json=body, headers=headers)).raise_for_status()
                    bare_t.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    await client.request_user_token(room_name="bench", user_id=user_id)
                    ours_t.append(time.perf_counter() - t0)
            finally:
                await client.aclose()
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            o, b = pct(ours_t, q) * 1000, pct(bare_t, q) * 1000
            self.rows.append(
                Row(
                    f"API client call, {label} of {n}",
                    f"{o:.2f} ms",
                    f"{b:.2f} ms bare httpx",
                    f"{o / b:.2f}x",
                    "POST /api/v1/agent/user-token on the reference API",
                )
            )

    # ---- figures ---------------------------------------------------------------------------------
    async def raw_create_dispatch(self, n: int) -> list[float]:
        lk = self.lk()
        times = []
        try:
            for i in range(n):
                room = f"bench-raw-{uuid.uuid4().hex[:8]}-{i}"
                await lk.room.create_room(api.CreateRoomRequest(name=room))
                t0 = time.perf_counter()
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="raw", room=room))
                times.append(time.perf_counter() - t0)
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        finally:
            await lk.aclose()
        return times

    def apply_to_dispatched(self, ns: str, n: int) -> list[float]:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            self.create(ns, f"lat-{i}", f"bench-lat-{ns}-{i}")
            wait_for(lambda i=i: self.status(ns, f"lat-{i}").get("dispatchId"), "Dispatched", 60, interval=0.005)
            times.append(time.perf_counter() - t0)
        return times

    async def latency_figure(self) -> None:
        n = 50 if self.quick else 200
        say(f"apply -> Dispatched latency ({n} objects) against raw CreateDispatch ({n} calls)")
        raw = await self.raw_create_dispatch(n)
        ns = self.namespace()
        op = self.operator(ns, "latency", WEBHOOK_PORT="0")
        try:
            ours = self.apply_to_dispatched(ns, n)
        finally:
            self.cleanup(ns)
            op.stop()
        for label, q in (("median", 0.5), ("p99", 0.99)):
            o, r = pct(ours, q) * 1000, pct(raw, q) * 1000
            self.rows.append(
                Row(
                    f"apply → Dispatched, {label} of {n}",
                    f"{o:.0f} ms",
                    f"{r:.1f} ms raw CreateDispatch",
                    f"{o / r:.1f}x",
                    "ours = API write + watch + CreateRoom/ListDispatch/CreateDispatch + status",
                )
            )

    async def storm_figure(self) -> None:
        storms = 50
        say(f"refresh storm of {storms}: naive dispatch-per-request against our re-applies")
        lk = self.lk()
        naive_room = f"bench-naive-{uuid.uuid4().hex[:8]}"
        try:
            await lk.room.create_room(api.CreateRoomRequest(name=naive_room))
            for _ in range(storms):
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name="naive", room=naive_room)
                )
            naive = len([d for d in await lk.agent_dispatch.list_dispatch(naive_room) if d.agent_name])
            await lk.room.delete_room(api.DeleteRoomRequest(room=naive_room))
        finally:
            await lk.aclose()
        ns = self.namespace()
        op = self.operator(ns, "storm", WEBHOOK_PORT="0")
        room = f"bench-storm-{uuid.uuid4().hex[:8]}"
        try:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AgentDispatch",
                "metadata": {"name": "storm"},
                "spec": {"room": room, "agentName": "bench-tutor"},
            }
            manifest = json.dumps(body)
            for _ in range(storms):  # what a page refresh does in a web backend that uses kubectl apply
                subprocess.run(
                    ["kubectl", "apply", "-n", ns, "-f", "-"],
                    input=manifest,
                    text=True,
                    check=True,
                    capture_output=True,
                    env=self.kubectl_env,
                )
            wait_for(lambda: self.status(ns, "storm").get("dispatchId"), "storm Dispatched", 60)
            lk = self.lk()
            try:
                ours = len([d for d in await lk.agent_dispatch.list_dispatch(room) if d.agent_name])
            finally:
                await lk.aclose()
        finally:
            self.cleanup(ns)
            op.stop()
        self.rows.append(
            Row(
                f"agents per room after a refresh storm of {storms}",
                str(ours),
                f"{naive} naive",
                f"{ours / naive:.2f}x",
                "one dispatch = one agent job",
            )
        )

    async def join_leave_latency(self, ns: str, tag: str, samples: int) -> tuple[list[float], list[float]]:
        """Seconds from a learner's join to phase Active, and from its leave to phase Idle."""
        joins, leaves = [], []

        def phase_is(name: str, phase: str) -> bool:
            return self.status(ns, name).get("phase") == phase

        for i in range(samples):
            room, name = f"bench-join-{tag}-{uuid.uuid4().hex[:6]}", f"join-{i}"
            self.create(ns, name, room, ttlSeconds=600)
            wait_for(lambda name=name: self.status(ns, name).get("dispatchId"), "bound", 60)
            learner = Learner(self.env, room)
            t0 = time.perf_counter()
            await learner.join()
            await asyncio.to_thread(wait_for, lambda name=name: phase_is(name, "Active"), "Active", 120, 0.02)
            joins.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await learner.leave()
            await asyncio.to_thread(wait_for, lambda name=name: phase_is(name, "Idle"), "Idle", 120, 0.02)
            leaves.append(time.perf_counter() - t0)
        return joins, leaves

    async def webhook_figure(self) -> None:
        samples = 5 if self.quick else 10
        interval_ms = 5000
        say(
            f"learner join/leave -> status: webhooks against the sweep alone (CLEANUP_INTERVAL_MS={interval_ms}), "
            f"{samples} learners each"
        )
        ns = self.namespace()
        op = self.operator(ns, "webhook", CLEANUP_INTERVAL_MS=str(interval_ms))
        try:
            hooked = await self.join_leave_latency(ns, "hook", samples)
        finally:
            self.cleanup(ns)
            op.stop()
        ns = self.namespace()
        op = self.operator(ns, "sweep", CLEANUP_INTERVAL_MS=str(interval_ms), WEBHOOK_ENABLED="false", WEBHOOK_PORT="0")
        try:
            swept = await self.join_leave_latency(ns, "sweep", samples)
        finally:
            self.cleanup(ns)
            op.stop()
        for label, index, note in (
            ("learner join → status Active", 0, "join time of the rtc client included"),
            ("learner leave → status Idle", 1, "from the rtc client's disconnect"),
        ):
            h, w = statistics.median(hooked[index]), statistics.median(swept[index])
            self.rows.append(
                Row(
                    f"{label}, median of {samples}",
                    f"{h * 1000:.0f} ms webhook",
                    f"{w * 1000:.0f} ms sweep only",
                    f"{h / w:.3f}x",
                    f"sweep every {interval_ms / 1000:.0f} s (default 60 s); {note}",
                )
            )

    def create_burst(self, ns: str, indexes: range) -> None:
        """Write objects ``obj-<i>`` as a burst: 8 writers at once, as a busy web backend would."""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        lock, written, t0 = threading.Lock(), [0], time.monotonic()
        last = [t0]

        def one(i: int) -> None:
            # A long TTL: these rooms never see a learner and must not expire during the run.
            self.create(ns, f"obj-{i}", f"bench-calls-{ns}-{i}", ttlSeconds=86400)
            with lock:
                written[0] += 1
                if time.monotonic() - last[0] >= 15:
                    last[0] = time.monotonic()
                    say(f"  {written[0]}/{len(indexes)} objects written after {last[0] - t0:.0f} s")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, indexes))

    def wait_dispatched(self, ns: str, size: int, timeout: float = 900) -> None:
        """Wait until ``size`` objects in ``ns`` are Dispatched, printing progress every 15 s."""
        t0 = last = time.monotonic()

        def check() -> bool:
            nonlocal last
            done = self.phases(ns).get("Dispatched", 0)
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                say(f"  {done}/{size} Dispatched after {last - t0:.0f} s")
            return done >= size

        wait_for(check, f"{size} Dispatched", timeout, interval=0.5)

    def steady_sweep_calls(self, op: ServiceProcess) -> tuple[float, float]:
        """LiveKit calls of the first complete sweep after a burst, and of the steady sweeps after it.

        A new or grown set of rooms is searched for orphans once (bounded per sweep); after that a
        room is looked at again only once per ORPHAN_GRACE_SECONDS. Steady = two sweeps in a row agree.
        """
        readings: list[float] = []
        for _ in range(8):
            sweeps = self.metric(op, "loqua_operator_sweep_duration_seconds_count")
            wait_for(
                lambda sweeps=sweeps: self.metric(op, "loqua_operator_sweep_duration_seconds_count") >= sweeps + 1,
                "a sweep",
                300,
                interval=0.5,
            )
            readings.append(self.metric(op, "loqua_operator_sweep_livekit_calls"))
            if len(readings) >= 3 and readings[-1] == readings[-2]:
                break
        # The first reading may belong to a sweep that began before the burst was bound.
        return readings[1], readings[-1]

    def grow(self, ns: str, op: ServiceProcess, sizes: list[int], made: int = 0) -> int:
        """Grow ``ns`` to each size in turn; one calls-per-sweep row per size."""
        for size in sizes:
            t0 = time.perf_counter()
            self.create_burst(ns, range(made, size))
            burst_size, made = size - made, size
            self.wait_dispatched(ns, size)
            burst = time.perf_counter() - t0
            first, steady = self.steady_sweep_calls(op)
            writes = self.metric(op, "loqua_operator_sweep_api_writes")
            self.rows.append(
                Row(
                    f"Kubernetes status writes per sweep, {size} objects",
                    f"{writes:.0f}",
                    f"{size} (a status heartbeat: one write per object)",
                    f"{writes / size:.4f}x",
                    "steady sweeps; loqua_operator_sweep_api_writes",
                )
            )
            notes = ["steady sweeps"]
            if first != steady:
                notes.append(f"the first sweep made {first:.0f} (one-time orphan search)")
            if burst_size:
                notes.append(f"{burst_size} new objects reached Dispatched in {burst:.1f} s")
            self.rows.append(
                Row(
                    f"LiveKit calls per sweep, {size} objects",
                    f"{steady:.0f}",
                    f"{size} (one call per object)",
                    f"{steady / size:.4f}x",
                    "; ".join(notes),
                )
            )
        return made

    def calls_per_sweep(self) -> None:
        """LiveKit calls and status writes per sweep at 10 and 100 objects (the scale part goes on from
        1,000: loqua_devstack.bench_scale)."""
        small = [10, 100]
        say(f"LiveKit calls per sweep at {small} objects")
        ns = self.namespace()
        op = self.operator(ns, "sweep-small", CLEANUP_INTERVAL_MS="5000", WEBHOOK_PORT="0")
        try:
            self.grow(ns, op, small)
        finally:
            op.stop()
            self.discard(ns, f"bench-calls-{ns}-")


def log_limiter_figure(quick: bool) -> list[Row]:
    """Cost per log call through the shared handler (format, redaction, rate limiter) against a plain
    stdlib StreamHandler with a similar format, both writing to /dev/null."""
    import logging
    import math

    from loqua_common.logging import configure_logging

    n = 20000 if quick else 100000
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below

    def timed(logger: logging.Logger) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            logger.info("dispatch %s bound for room %s", i, "room-1")
        return (time.perf_counter() - t0) / n

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        plain = logging.StreamHandler(sink)
        plain.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] [-] [-] [-] %(message)s"))
        root.handlers, root.level = [plain], logging.INFO
        base = timed(logging.getLogger("bench.plain"))
        rows = []
        for label, rate in (("unlimited", math.inf), ("at LOG_RATE_LIMIT=400 (most lines dropped)", 400.0)):
            configure_logging(component="bench", fmt="text", rate_limit=rate, stream=sink)
            ours = timed(logging.getLogger("bench.ours"))
            rows.append(
                Row(
                    f"log call cost, {label}",
                    f"{ours * 1e6:.1f} µs",
                    f"{base * 1e6:.1f} µs plain logging",
                    f"{ours / base:.2f}x",
                    f"{n} calls, text format, redaction on",
                )
            )
        return rows
    finally:
        root.handlers, root.level = saved
        sink.close()


def table(rows: list[Row]) -> str:
    out = ["| figure | ours | baseline (same run) | ratio | note |", "| --- | ---: | ---: | ---: | --- |"]
    out += [f"| {r.figure} | {r.ours} | {r.baseline} | {r.ratio} | {r.note} |" for r in rows]
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> str:
    quiet_dev_secret_warning()
    only, quick = args.only, args.quick
    stack = Stack(devstack_dir())
    started = not stack.any_running()
    env = stack.up()
    subprocess.run(
        ["kubectl", "apply", "-f", str(ROOT / "deploy" / "crds")],
        check=True,
        capture_output=True,
        env=kubectl_env(env),
    )
    bench = Bench(env, quick)
    try:
        figures = {
            "latency": bench.latency_figure,
            "storm": bench.storm_figure,
            "webhook": bench.webhook_figure,
            "api": bench.api_client_figure,
        }
        for name, fn in figures.items():
            if not only or name in only:
                await fn()
        if not only or "agent" in only:
            from loqua_devstack.bench_agent import agent_latency_figure

            await agent_latency_figure(bench, say)
        if not only or "sweep" in only:
            await asyncio.to_thread(bench.calls_per_sweep)
        if not only or "scale" in only:
            from loqua_devstack.bench_scale import ScaleBench, curve_sizes

            scale = ScaleBench(
                bench,
                curve_sizes(args.scale, quick),
                sweeps=args.sweeps or (5 if quick else 60),
                sweep_ms=args.sweep_ms,
                plot=Path(args.plot) if args.plot else None,
                say=say,
            )
            await asyncio.to_thread(scale.run)
            bench.curve = scale.curve_table()
        if not only or "logs" in only:
            bench.rows.extend(log_limiter_figure(quick))
        if "scaling" in only:  # the cluster part: needs the local node (root); only when asked for
            from loqua_devstack.bench_scaling import scaling_figure

            (scaler, one, four) = await scaling_figure(stack, say)
            bench.rows.append(
                Row(
                    "time until 6 learners are served, local node (2 sessions/pod)",
                    f"scaler: {scaler[1]}",
                    f"1 fixed: {one[1]}; 4 fixed: {four[1]}",
                    "-",
                    "learners arrive together; 1 fixed serves 2 at most",
                )
            )
            windows = "/".join(f"{w:.0f}" for w in (scaler[3], one[3], four[3]))
            bench.rows.append(
                Row(
                    "worker pod-seconds over the same window from the arrival",
                    f"scaler: {scaler[2]:.0f} pod-s",
                    f"4 fixed: {four[2]:.0f} pod-s; 1 fixed: {one[2]:.0f} pod-s",
                    f"{scaler[2] / four[2]:.2f}x of 4 fixed" if four[2] else "-",
                    f"window {windows} s (scaler/1/4; the same by design, ± one poll)",
                )
            )
    finally:
        if started:
            stack.down()
    out = table(bench.rows)
    if bench.curve:
        out += "\n\nThe curve (operator memory, CPU and work per sweep as objects grow):\n\n" + bench.curve
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loqua-bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples (for a smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=["latency", "storm", "webhook", "api", "agent", "sweep", "scale", "logs", "scaling"],
        help="run only this figure (repeatable); agent = apply → tutor agent in the room (a real worker);"
        " sweep = calls per sweep at 10 and 100 objects; scale = the burst against no operator, API writes"
        " per object, resume, and the curve of memory/CPU/work per sweep at 1,000 and 10,000 objects;"
        " scaling = the cluster part (local node, `make bench-cluster`), never in the default run",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=int(os.environ.get("LOQUA_BENCH_SCALE", "10000")),
        help="largest size of the curve (default 10000, env LOQUA_BENCH_SCALE); 50000 adds that row"
        " (about half an hour on 2 cores: the API server takes ~80 writes/s)",
    )
    parser.add_argument(
        "--sweeps",
        type=int,
        default=0,
        help="steady sweeps measured per size (default 60, an hour of the default 60 s period; --quick: 5)",
    )
    parser.add_argument(
        "--sweep-ms", type=int, default=1000, help="the operator's CLEANUP_INTERVAL_MS in the scale part"
    )
    parser.add_argument(
        "--plot",
        default=None,
        help="PNG of memory against objects (default docs/operator-memory.png; --quick: .devstack/bench/)",
    )
    parser.add_argument("--out", default="bench-results.md", help="also write the table here")
    args = parser.parse_args(argv)
    if args.plot is None:
        quick_plot = devstack_dir() / "bench" / "operator-memory.png"  # a smoke run leaves docs/ alone
        args.plot = str(quick_plot if args.quick else ROOT / "docs" / "operator-memory.png")
    t0 = time.monotonic()
    result = asyncio.run(main_async(args))
    header = (
        f"Benchmarks (`make bench`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{time.monotonic() - t0:.0f} s\n\n"
    )
    Path(args.out).write_text(header + result + "\n")
    print(header + result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
