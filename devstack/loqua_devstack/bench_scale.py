"""`make bench`'s scale part (issue 15): a burst against the same burst with no operator, Kubernetes
writes per bound object as the API server counted them, resume over many bound objects, and the
curve of memory, CPU, writes and LiveKit calls per sweep as objects grow (with a PNG of memory).

Every figure has its baseline in the same run: the burst against writing the same objects with no
operator running (same 8 writers); writes against that burst's own writes; memory against the idle
operator; calls and writes per sweep against one per object.

Readings never load the API server: progress comes from the operator's ``/metrics``
(``loqua_operator_objects`` by phase), and one paged LIST confirms what it says at the end.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes

from loqua_devstack import bench_readings as readings
from loqua_devstack.bench import Row, metrics_text
from loqua_devstack.services import ServiceProcess, wait_for

GROUP, VERSION, PLURAL = "agents.loqua.app", "v1alpha1", "agentdispatches"
SWEEP = "loqua_operator_sweep_duration_seconds_count"
LIVEKIT = "loqua_operator_livekit_requests_total"
WARM_UP = 50  # objects written (untimed) before the baseline burst
LIVEKIT_WRITES = ("CreateRoom", "CreateDispatch", "DeleteDispatch", "DeleteRoom")


def curve_sizes(scale: int, quick: bool) -> list[int]:
    """Sizes of the curve: 1,000 and 10,000 objects, up to ``scale`` (``--quick``: 300)."""
    if quick:
        return [min(300, scale)]
    sizes = [s for s in (1000, 10000) if s <= scale]
    return [*sizes, scale] if scale > sizes[-1] else sizes


@dataclass
class Burst:
    objects: int  # written in this burst
    size: int  # objects bound after it
    seconds: float  # first write → all Dispatched
    written: float  # first write → last write acknowledged
    cpu: float  # operator CPU seconds meanwhile
    rss_mib: float  # operator VmRSS when all were Dispatched
    writes: Counter[readings.WriteKey]  # the API server's count, until it settled
    load: float  # the machine's 1-minute load average when it began
    restarts: list[str] = field(default_factory=list)  # why the operator exited meanwhile, if it did


@dataclass
class Point:
    """One size on the curve, read from one operator process."""

    objects: int
    how: str  # "after a burst" / "restarted" / "idle"
    rss_mib: float
    hwm_mib: float
    cpu_percent: float = float("nan")  # % of one core over the steady window
    writes_per_sweep: float = float("nan")  # agentdispatches writes per sweep (API server's count)
    calls_per_sweep: float = float("nan")  # LiveKit calls per sweep (the operator's counter)
    sweeps: int = 0
    calls: dict[str, float] = field(default_factory=dict)
    burst_rss_mib: float = float("nan")  # VmRSS right when the burst was all Dispatched


def ready(proc: ServiceProcess) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(proc.health_url.replace("/healthz", "/readyz"), timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


EXIT_CAUSES = ("leadership lost", "stepping down", "exiting", "fatal")


def exit_reason(log_lines: list[str]) -> str:
    """Why an operator exited, from its log lines: the first error naming a cause of exit, else the
    last error (kopf's retries and shutdown noise come before and after the cause)."""
    errors = [line.split("] ", 5)[-1] for line in log_lines if "[ERROR]" in line or "[CRITICAL]" in line]
    causes = [e for e in errors if any(c in e.lower() for c in EXIT_CAUSES)]
    return (causes or errors or [""])[0 if causes else -1]


class Supervised:
    """The operator as its Deployment runs it: a process that exits (it steps down when it cannot renew
    its Lease within the renew deadline, as on a machine this loaded) is started again, and the bench
    keeps the reason for its rows."""

    def __init__(
        self,
        start: Callable[[], ServiceProcess],
        log_file: Path,
        say: Callable[[str], None],
        first: Callable[[], ServiceProcess] | None = None,
    ) -> None:
        """``start`` starts the process and waits until it is ready; ``first``, when given, starts it
        the first time instead (a caller that times the start itself)."""
        self._start = start
        self._log_file = log_file
        self._say = say
        self._log_from = self._log_size()  # the log is appended to: this process's lines begin here
        self.proc = (first or start)()
        self.restarts: list[str] = []

    def _log_size(self) -> int:
        return self._log_file.stat().st_size if self._log_file.exists() else 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def text(self) -> str:
        """The operator's /metrics; a dead process is restarted first, a slow one asked again."""
        for attempt in range(6):
            try:
                return metrics_text(self.proc)
            except OSError:
                if self.proc.alive():
                    if attempt == 5:
                        raise
                    time.sleep(1)
                    continue
                self.restart()
        raise RuntimeError(f"the operator keeps exiting: {self.restarts[-3:]} (see {self.proc.log_file})")

    def restart(self) -> None:
        with self._log_file.open("rb") as log:
            log.seek(self._log_from)
            lines = log.read().decode(errors="replace").splitlines()
        code = self.proc.proc.poll() if self.proc.proc else None
        reason = exit_reason(lines)
        reason = f"{reason[:160]} (exit code {code})" if reason else f"exit code {code}"
        self.restarts.append(reason)
        self._say(f"  the operator exited: {reason}; starting it again, as its Deployment would")
        self.proc.stop()
        self._log_from = self._log_size()
        self.proc = self._start()

    def cpu_since(self, pid: int | None, cpu0: float) -> float:
        """CPU seconds of this process since ``cpu0`` was read, NaN when it was restarted meanwhile."""
        return readings.cpu_seconds(self.pid) - cpu0 if pid == self.pid else float("nan")

    def stop(self) -> None:
        self.proc.stop()


class ScaleBench:
    """The scale figures, on a :class:`loqua_devstack.bench.Bench` (its clients, rows and helpers)."""

    def __init__(self, bench, sizes: list[int], sweeps: int, sweep_ms: int, plot: Path | None, say) -> None:  # type: ignore[no-untyped-def]
        self.bench = bench
        self.sizes = sizes
        self.sweeps = sweeps
        self.sweep_ms = sweep_ms
        self.plot = plot
        self.say: Callable[[str], None] = say
        self.points: list[Point] = []

    @property
    def restarted_sweeps(self) -> int:
        """Fewer steady sweeps for the restarted operator: its line is memory without a burst."""
        return max(5, self.sweeps // 6)

    # ---- readings ----------------------------------------------------------------------------------
    def apiserver_writes(self) -> Counter[readings.WriteKey]:
        """The API server's own write counters for AgentDispatch objects and Events."""
        kube = self.bench.kube
        resp = kube.call_api("GET", f"{kube.configuration.host}/metrics", _request_timeout=30)
        if resp.status != 200:
            raise RuntimeError(f"GET /metrics of the API server answered {resp.status} {resp.reason}")
        return readings.api_writes(resp.read().decode())

    def settled_writes(self, before_settle: float = 3.0, timeout: float = 60) -> Counter[readings.WriteKey]:
        """The write counters once they stopped moving for ``before_settle`` seconds (trailing writes of
        a burst, such as kopf's last annotation patches and Events, belong to it)."""
        last, deadline = self.apiserver_writes(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(before_settle)
            now = self.apiserver_writes()
            if now == last:
                return now
            last = now
        return last

    def dispatched(self, op: Supervised) -> int:
        return int(readings.value(op.text(), "loqua_operator_objects", phase="Dispatched"))

    def wait_dispatched(self, ns: str, op: Supervised, size: int, timeout: float = 1800) -> None:
        """Until ``size`` objects are Dispatched: the operator's count first (polled every 0.2 s, no load
        on the API server), then one paged LIST of the objects as stored confirms it."""
        t0 = last = time.monotonic()

        def check() -> bool:
            nonlocal last
            done = self.dispatched(op)
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                self.say(f"  {done}/{size} Dispatched after {last - t0:.0f} s")
            return done >= size

        while True:
            wait_for(check, f"{size} Dispatched (operator's count)", timeout, interval=0.2)
            stored = self.stored_phases(ns)
            if stored.get("Dispatched", 0) >= size:
                return
            self.say(f"  the operator counts {size} Dispatched, the API server stores {stored}; waiting")
            time.sleep(1)

    def stored_phases(self, ns: str) -> dict[str, int]:
        out: dict[str, int] = {}
        token = None
        while True:
            page = self.bench.custom.list_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, limit=500, **({"_continue": token} if token else {})
            )
            for item in page["items"]:
                phase = (item.get("status") or {}).get("phase", "none")
                out[phase] = out.get(phase, 0) + 1
            token = page["metadata"].get("continue")
            if not token:
                return out

    def steady(self, op: Supervised, size: int, how: str, burst_rss: float = float("nan"), sweeps: int = 0) -> Point:
        """``sweeps`` (default ``self.sweeps``) complete sweeps after a first one (which may search new
        rooms for orphans): per sweep the API server's count of AgentDispatch writes and the operator's
        LiveKit calls; CPU over the window; memory at its end."""
        wanted = sweeps or self.sweeps
        text = op.text()
        first = readings.value(text, SWEEP)
        wait_for(lambda: readings.value(op.text(), SWEEP) >= first + 1, "a sweep", 600, interval=0.2)
        text = op.text()
        sweeps0, calls0 = readings.value(text, SWEEP), readings.by_label(text, LIVEKIT, "method")
        pid, writes0, cpu0, t0 = op.pid, self.apiserver_writes(), readings.cpu_seconds(op.pid), time.monotonic()
        last = [t0]

        def swept() -> bool:
            done = readings.value(op.text(), SWEEP) - sweeps0
            if time.monotonic() - last[0] >= 15:
                last[0] = time.monotonic()
                self.say(f"  {size} objects: {done:.0f}/{wanted} steady sweeps")
            return done >= wanted

        wait_for(swept, f"{wanted} sweeps", 60 + wanted * max(30, self.sweep_ms / 1000 * 3), interval=1)
        seconds, cpu = time.monotonic() - t0, op.cpu_since(pid, cpu0)
        text = op.text()
        sweeps = readings.value(text, SWEEP) - sweeps0
        calls = {m: v - calls0.get(m, 0) for m, v in readings.by_label(text, LIVEKIT, "method").items()}
        calls = {m: v for m, v in calls.items() if v}
        writes = readings.delta(self.apiserver_writes(), writes0)
        mem = readings.read_memory(op.pid)
        point = Point(
            size,
            how,
            mem.rss_mib,
            mem.hwm_mib,
            100.0 * cpu / seconds,
            readings.total(writes, "agentdispatches") / sweeps,
            sum(calls.values()) / sweeps,
            int(sweeps),
            calls,
            burst_rss,
        )
        self.points.append(point)
        self.say(
            f"  {size} objects ({how}): VmRSS {mem.rss_mib:.0f} MiB, VmHWM {mem.hwm_mib:.0f} MiB, "
            f"{point.cpu_percent:.1f} % CPU, {point.writes_per_sweep:.2f} writes and "
            f"{point.calls_per_sweep:.2f} LiveKit calls per sweep over {sweeps:.0f} sweeps"
        )
        return point

    # ---- scenario ----------------------------------------------------------------------------------
    def log(self, tag: str) -> Path:
        return self.bench.logs / f"operator-{tag}.log"  # where Bench.operator_unstarted writes it

    def operator(self, ns: str, tag: str) -> Supervised:
        env = {"CLEANUP_INTERVAL_MS": str(self.sweep_ms), "WEBHOOK_PORT": "0", "LEASE_NAME": f"bench-{tag}"}
        return Supervised(lambda: self.bench.operator(ns, tag, **env), self.log(tag), self.say)

    def baseline_burst(self, n: int) -> tuple[float, Counter[readings.WriteKey], float]:
        """Seconds to write ``n`` objects with no operator running, the writes the server counted, and
        the machine's load average when it began."""
        ns = self.bench.namespace()
        self.say(f"baseline: {n} objects written by the same 8 writers, no operator running")
        try:
            self.bench.create_burst(ns, range(n, n + WARM_UP))  # the first writes of a run are slower
            before, load = self.apiserver_writes(), os.getloadavg()[0]
            t0 = time.perf_counter()
            self.bench.create_burst(ns, range(n))
            seconds = time.perf_counter() - t0
            writes = readings.delta(self.settled_writes(), before)
        finally:
            self.drop_plain(ns)
        self.say(f"  {n} objects written in {seconds:.1f} s with no operator (load average {load:.1f})")
        return seconds, writes, load

    def drop_plain(self, ns: str) -> None:
        """Delete a namespace of objects without finalizers, and wait until it is gone (so that its
        deletion does not load the API server during the next figure)."""
        self.bench.core.delete_namespace(ns)

        def gone() -> bool:
            try:
                self.bench.core.read_namespace(ns)
            except kubernetes.client.ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, f"namespace {ns} deleted", 600, interval=1)

    def burst(self, ns: str, op: Supervised, made: int, size: int) -> Burst:
        """Objects ``made..size`` written by the 8 writers, until all ``size`` are Dispatched."""
        pid, restarts = op.pid, len(op.restarts)
        before, cpu0, load = self.apiserver_writes(), readings.cpu_seconds(op.pid), os.getloadavg()[0]
        t0 = time.perf_counter()
        self.bench.create_burst(ns, range(made, size))
        written = time.perf_counter() - t0
        self.wait_dispatched(ns, op, size)
        seconds = time.perf_counter() - t0
        cpu = op.cpu_since(pid, cpu0)
        rss = readings.read_memory(op.pid).rss_mib
        writes = readings.delta(self.settled_writes(), before)
        self.say(f"  {size - made} objects Dispatched {seconds:.1f} s after the first write (writes: {written:.1f} s)")
        return Burst(size - made, size, seconds, written, cpu, rss, writes, load, op.restarts[restarts:])

    def run(self) -> None:
        first, start = self.sizes[0], len(self.bench.rows)
        baselines = [self.baseline_burst(first)]
        ns = self.bench.namespace()
        op = self.operator(ns, "scale")
        bursts: list[Burst] = []
        try:
            time.sleep(2 * self.sweep_ms / 1000 + 1)
            idle = readings.read_memory(op.pid)
            cpu0 = readings.cpu_seconds(op.pid)
            time.sleep(10)
            idle_cpu = 10.0 * (readings.cpu_seconds(op.pid) - cpu0)
            self.points.append(Point(0, "idle", idle.rss_mib, idle.hwm_mib, idle_cpu))
            self.say(f"idle operator: VmRSS {idle.rss_mib:.0f} MiB, VmHWM {idle.hwm_mib:.0f} MiB, {idle_cpu:.1f} % CPU")
            made = 0
            for size in self.sizes:
                self.say(f"a burst of {size - made} objects with the operator running (same 8 writers), to {size}")
                bursts.append(self.burst(ns, op, made, size))
                made = size
                self.steady(op, size, "after a burst", bursts[-1].rss_mib)
            op = self.resume(ns, op, made)
            self.steady(op, made, "restarted", sweeps=self.restarted_sweeps)
        finally:
            op.stop()
            self.say(f"dropping {ns} (finalizers stripped with the operator stopped)")
            self.bench.discard(ns, f"bench-calls-{ns}-")
        baselines.append(self.baseline_burst(first))  # again at the end: the machine's load drifts
        # The bursts' rows go before the resume rows (the baselines were complete only now).
        self.bench.rows[start:start] = [row for burst in bursts for row in self.burst_rows(burst, baselines)]
        if self.plot:
            self.draw(self.plot)
            self.say(f"memory plot written to {self.plot}")

    def burst_rows(self, burst: Burst, baselines: list[tuple[float, Counter[readings.WriteKey], float]]) -> list[Row]:
        """Rows of one burst: time to all Dispatched against writing the objects with no operator (the
        mean of the baseline bursts before and after, scaled to this burst's size), and the API writes
        per bound object beyond those of the writes themselves."""
        n = burst.objects
        base_n = self.sizes[0]
        scale = n / base_n
        base = statistics.mean(b[0] for b in baselines) * scale
        base_writes = Counter({k: round(v * scale) for k, v in baselines[0][1].items()})
        grown = f" (to {burst.size})" if burst.size != n else ""
        rows: list[Row] = []
        each = ", ".join(f"{b[0]:.1f} s (load {b[2]:.1f})" for b in baselines)
        rows.append(
            Row(
                f"burst of {n} objects{grown} → all Dispatched",
                f"{burst.seconds:.1f} s",
                f"{base:.1f} s to write them with no operator",
                f"{burst.seconds / base:.2f}x",
                f"same 8 writers; baseline = mean of {base_n} objects written before and after"
                f"{' scaled to ' + str(n) if grown else ''}: {each}; with the operator (load {burst.load:.1f}) "
                f"the writes alone took {burst.written:.1f} s; "
                + (
                    f"operator CPU {burst.cpu:.1f} s ({1000 * burst.cpu / n:.1f} ms per object)"
                    if burst.cpu == burst.cpu  # not NaN: no restart
                    else "operator CPU not comparable (restarted)"
                )
                + (
                    f"; the operator exited {len(burst.restarts)}x and was started again: {burst.restarts[0]}"
                    if burst.restarts
                    else ""
                ),
            )
        )
        writes = burst.writes
        operator = readings.delta(writes, base_writes)  # the burst's own POSTs cancel out
        extra = Counter({k: v for k, v in operator.items() if v > 0})
        ad, ev = readings.total(extra, "agentdispatches"), readings.total(extra, "events")
        creates = max(1, readings.total(base_writes, "agentdispatches"))
        rows.append(
            Row(
                f"Kubernetes API writes per bound object, burst of {n}{grown}",
                f"{ad / n:.2f} by the operator",
                f"{creates / n:.2f} (the create itself, no operator)",
                f"{(creates + ad) / creates:.2f}x",
                "apiserver_request_total on agentdispatches(/status) beyond the burst's own creates: "
                + readings.describe(Counter({k: v for k, v in extra.items() if k[0] == "agentdispatches"}), n),
            )
        )
        rows.append(
            Row(
                f"Events written per bound object, burst of {n}{grown}",
                f"{ev / n:.2f}",
                f"{readings.total(base_writes, 'events') / n:.2f} with no operator",
                "-",
                "apiserver_request_total on events: "
                + readings.describe(Counter({k: v for k, v in extra.items() if k[0] == "events"}), n),
            )
        )
        return rows

    def resume(self, ns: str, op: Supervised, n: int) -> Supervised:
        """Restart the operator over ``n`` bound objects: until ready (/readyz) and until its first
        sweep checked every object (the sweep runs only once the index holds the full listing);
        LiveKit calls and Kubernetes writes meanwhile."""
        self.say(f"resume: restarting the operator over {n} bound objects")
        op.stop()
        before = self.apiserver_writes()
        t0 = time.perf_counter()
        env = {"CLEANUP_INTERVAL_MS": str(self.sweep_ms), "WEBHOOK_PORT": "0", "LEASE_NAME": "bench-scale"}
        op = Supervised(
            lambda: self.bench.operator(ns, "scale-resume", **env),
            self.log("scale-resume"),
            self.say,
            first=lambda: self.bench.operator_unstarted(ns, "scale-resume", **env).start(),
        )
        wait_for(lambda: ready(op.proc), "the restarted operator ready", 600, interval=0.05)
        t_ready = time.perf_counter() - t0
        wait_for(lambda: readings.value(op.text(), SWEEP) >= 1, "its first sweep", 600, interval=0.05)
        t_checked = time.perf_counter() - t0
        binds_at_check = self.resume_calls(op)
        t_resumed, binds = self.resume_handlers_done(op, n, t0)
        text = op.text()
        calls = {m: v for m, v in readings.by_label(text, LIVEKIT, "method").items() if v}
        writes = readings.delta(self.settled_writes(), before)
        mem = readings.read_memory(op.pid)
        made = sum(calls.get(m, 0) for m in LIVEKIT_WRITES)
        self.bench.rows += [
            Row(
                f"resume over {n} bound objects: ready, all checked",
                f"ready {t_ready:.1f} s, checked {t_checked:.1f} s",
                "goal: within 30 s",
                f"{t_checked / 30:.2f}x of the goal",
                f"restart → /readyz 200, → first sweep done (every object against one ListRooms; "
                f"{binds_at_check:.0f} of kopf's resume handler calls by then, {binds:.0f} after {t_resumed:.1f} s); "
                f"VmRSS {mem.rss_mib:.0f} MiB, VmHWM {mem.hwm_mib:.0f} MiB"
                + (f"; it exited and was started again: {op.restarts[0]}" if op.restarts else ""),
            ),
            Row(
                f"LiveKit calls on resume, {n} bound objects",
                f"{calls.get('ListRooms', 0):.0f} ListRooms, {made:.0f} writes",
                f"{n} (one call per object)",
                f"{sum(calls.values()) / n:.4f}x",
                "until the first sweep is done: " + (", ".join(f"{m} {v:.0f}" for m, v in sorted(calls.items()))),
            ),
            Row(
                f"Kubernetes writes on resume, {n} bound objects",
                f"{readings.total(writes, 'agentdispatches')}",
                f"{n} (one per object)",
                f"{readings.total(writes, 'agentdispatches') / n:.4f}x",
                f"apiserver_request_total until the writes settle: {readings.describe(writes)}",
            ),
        ]
        self.say(f"  ready after {t_ready:.1f} s, all checked after {t_checked:.1f} s; LiveKit {calls}")
        return op

    @staticmethod
    def resume_calls(op: Supervised) -> float:
        return readings.value(op.text(), "loqua_operator_reconcile_duration_seconds_count", handler="bind")

    def resume_handlers_done(self, op: Supervised, n: int, t0: float, quiet: float = 3.0) -> tuple[float, float]:
        """(seconds since ``t0``, calls) once kopf's resume handler calls reached ``n`` or stopped
        moving for ``quiet`` seconds (an operator that checks bound objects without them)."""
        calls, changed = self.resume_calls(op), time.perf_counter()
        deadline = changed + 600
        while calls < n and time.perf_counter() - changed < quiet and time.perf_counter() < deadline:
            time.sleep(0.1)
            now = self.resume_calls(op)
            if now != calls:
                calls, changed = now, time.perf_counter()
        return changed - t0, calls

    def curve_table(self) -> str:
        """The curve: one line per size and operator process, the idle operator first (the baseline of
        memory and CPU; one write and one call per object is the baseline of the per-sweep columns)."""
        idle = next(p for p in self.points if p.how == "idle")
        out = [
            "| objects | operator | VmRSS after the burst | VmRSS steady | VmHWM (peak) | KiB/object above idle "
            "| CPU, % of a core | status writes/sweep | LiveKit calls/sweep |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]

        def mib(v: float) -> str:
            return "-" if v != v else f"{v:.0f} MiB"  # NaN: not measured for this line

        for p in self.points:
            per_object = "-" if not p.objects else f"{(p.rss_mib - idle.rss_mib) * 1024 / p.objects:.1f}"
            per_sweep = "-" if not p.sweeps else f"{p.writes_per_sweep:.2f}"
            calls = "-" if not p.sweeps else f"{p.calls_per_sweep:.2f}"
            out.append(
                f"| {p.objects} | {p.how} | {mib(p.burst_rss_mib)} | {mib(p.rss_mib)} | {mib(p.hwm_mib)} | "
                f"{per_object} | {p.cpu_percent:.1f} | {per_sweep} | {calls} |"
            )
        return "\n".join(out) + (
            f"\n\nSteady = after {self.sweeps} sweeps every {self.sweep_ms / 1000:g} s (restarted: "
            f"{self.restarted_sweeps}; CPU over them); status writes"
            " per sweep as the API server counted them (apiserver_request_total on agentdispatches);"
            " LiveKit calls per sweep from loqua_operator_livekit_requests_total."
        )

    def draw(self, path: Path) -> None:
        """Memory against objects: VmRSS and VmHWM after bursts, and of the restarted operator."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grown = [p for p in self.points if p.how in ("idle", "after a burst")]
        restarted = [p for p in self.points if p.how == "restarted"]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        xs = [p.objects for p in grown]
        ax.plot(xs, [p.rss_mib for p in grown], "o-", label="VmRSS after bursts, steady sweeps")
        ax.plot(xs, [p.hwm_mib for p in grown], "s--", label="VmHWM (peak) of that process")
        bursts = [p for p in grown if p.burst_rss_mib == p.burst_rss_mib]  # not NaN
        after = [p.burst_rss_mib for p in bursts]
        ax.plot([p.objects for p in bursts], after, "x", ms=9, label="VmRSS right after a burst")
        if restarted:
            ax.plot([p.objects for p in restarted], [p.rss_mib for p in restarted], "^", ms=9, label="VmRSS, restarted")
            ax.plot([p.objects for p in restarted], [p.hwm_mib for p in restarted], "v", ms=9, label="VmHWM, restarted")
        ax.set_xlabel("AgentDispatch objects bound")
        ax.set_ylabel("operator memory (MiB)")
        ax.set_title(f"loqua-operator memory against objects ({time.strftime('%Y-%m-%d', time.gmtime())})")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
