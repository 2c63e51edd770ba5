"""The bench's readings: the API server's request counters, the operator's /metrics, /proc figures."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from loqua_devstack import bench_readings as readings


def request_line(name: str, code: str, group: str, resource: str, subresource: str, verb: str, v: int) -> str:
    labels = (
        f'code="{code}",component="apiserver",dry_run="",group="{group}",resource="{resource}",'
        f'scope="resource",subresource="{subresource}",verb="{verb}",version="v1"'
    )
    return f"{name}{{{labels}}} {v}"


AD = "agents.loqua.app"
APISERVER = "\n".join(
    [
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, ...",
        "# TYPE apiserver_request_total counter",
        *(
            request_line("apiserver_request_total", *fields)
            for fields in (
                ("201", AD, "agentdispatches", "", "POST", 1000),
                ("200", AD, "agentdispatches", "", "PATCH", 1500),
                ("409", AD, "agentdispatches", "", "PATCH", 3),
                ("200", AD, "agentdispatches", "status", "PATCH", 1000),
                ("200", AD, "agentdispatches", "", "LIST", 77),
                ("200", AD, "agentdispatches", "", "WATCH", 4),
                ("201", "", "events", "", "POST", 1000),
                ("200", "coordination.k8s.io", "leases", "", "PUT", 90),
                ("200", "", "namespaces", "", "DELETE", 2),
            )
        ),
        "# TYPE apiserver_request_terminations_total counter",
        request_line("apiserver_request_terminations_total", "429", "", "events", "", "POST", 9),
        "",
    ]
)


def test_api_writes_counts_write_verbs_of_the_resources_asked_for_only() -> None:
    writes = readings.api_writes(APISERVER)
    assert writes == Counter(
        {
            ("agentdispatches", "", "POST"): 1000,
            ("agentdispatches", "", "PATCH"): 1503,  # a 409 is a write the server had to take too
            ("agentdispatches", "status", "PATCH"): 1000,
            ("events", "", "POST"): 1000,  # not the terminations counter, not LIST/WATCH, not leases
        }
    )
    assert readings.api_writes(APISERVER, resources=("leases",)) == Counter({("leases", "", "PUT"): 90})


def test_delta_total_and_describe() -> None:
    before = readings.api_writes(APISERVER)
    after = before + Counter({("agentdispatches", "status", "PATCH"): 500, ("events", "", "POST"): 10})
    moved = readings.delta(after, before)
    assert moved == Counter({("agentdispatches", "status", "PATCH"): 500, ("events", "", "POST"): 10})
    assert readings.total(moved, "agentdispatches") == 500
    assert readings.describe(moved, per=1000) == "PATCH agentdispatches/status 0.50, POST events 0.01"
    assert readings.describe(Counter()) == "none"


OPERATOR = """\
# TYPE loqua_operator_sweep_duration_seconds histogram
loqua_operator_sweep_duration_seconds_bucket{le="0.1"} 3.0
loqua_operator_sweep_duration_seconds_count 7.0
loqua_operator_sweep_duration_seconds_sum 0.4
# TYPE loqua_operator_livekit_requests_total counter
loqua_operator_livekit_requests_total{method="ListRooms"} 7.0
loqua_operator_livekit_requests_total{method="CreateRoom"} 1000.0
loqua_operator_livekit_requests_total{method="CreateDispatch"} 1000.0
# TYPE loqua_operator_objects gauge
loqua_operator_objects{phase="Dispatched"} 990.0
loqua_operator_objects{phase="Pending"} 10.0
"""


def test_operator_values_by_name_and_label() -> None:
    assert readings.value(OPERATOR, "loqua_operator_sweep_duration_seconds_count") == 7
    assert readings.value(OPERATOR, "loqua_operator_objects") == 1000
    assert readings.value(OPERATOR, "loqua_operator_objects", phase="Pending") == 10
    assert readings.value(OPERATOR, "loqua_operator_missing") == 0
    assert readings.by_label(OPERATOR, "loqua_operator_livekit_requests_total", "method") == {
        "ListRooms": 7,
        "CreateRoom": 1000,
        "CreateDispatch": 1000,
    }


STATUS = """\
Name:\tloqua-operator
State:\tS (sleeping)
VmPeak:\t 1234567 kB
VmHWM:\t  409600 kB
VmRSS:\t  245760 kB
Threads:\t12
"""


def test_memory_from_proc_status() -> None:
    assert readings.memory(STATUS) == readings.Memory(rss_mib=240.0, hwm_mib=400.0)
    with pytest.raises(ValueError, match="VmHWM, VmRSS"):
        readings.memory("Name:\tkthreadd\nState:\tS (sleeping)\n")


def test_cpu_ticks_skips_a_command_name_with_spaces_and_parens() -> None:
    stat = "4242 (loqua op (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 12 0 1000 0 0"
    assert readings.cpu_ticks(stat) == 175


def test_readers_on_this_process() -> None:
    mem = readings.read_memory(os.getpid())
    assert 0 < mem.rss_mib <= mem.hwm_mib
    assert readings.cpu_seconds(os.getpid()) > 0


def test_curve_sizes() -> None:
    from loqua_devstack.bench_scale import curve_sizes

    assert curve_sizes(10000, quick=False) == [1000, 10000]
    assert curve_sizes(50000, quick=False) == [1000, 10000, 50000]
    assert curve_sizes(3000, quick=False) == [1000, 3000]
    assert curve_sizes(10000, quick=True) == [300]


def test_curve_table_and_plot(tmp_path) -> None:
    from loqua_devstack.bench_scale import Point, ScaleBench

    scale = ScaleBench(None, [1000], sweeps=60, sweep_ms=1000, plot=None, say=print)
    scale.points = [
        Point(0, "idle", 100.0, 101.0, 0.2),
        Point(1000, "after a burst", 150.0, 200.0, 1.5, 0.0, 1.0, 60, {"ListRooms": 60}, 180.0),
        Point(1000, "restarted", 120.0, 130.0, 1.0, 0.0, 1.0, 60, {"ListRooms": 60}),
    ]
    table = scale.curve_table()
    assert "| 0 | idle | - | 100 MiB | 101 MiB | - | 0.2 | - | - |" in table
    assert "| 1000 | after a burst | 180 MiB | 150 MiB | 200 MiB | 51.2 | 1.5 | 0.00 | 1.00 |" in table
    assert "| 1000 | restarted | - | 120 MiB |" in table
    scale.draw(tmp_path / "memory.png")
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeProcess:
    """A ServiceProcess that has exited: its /metrics refuses connections."""

    def __init__(self, log_file, port: int) -> None:
        self.log_file = log_file
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.proc = None
        self.stopped = False

    def alive(self) -> bool:
        return False

    def stop(self) -> None:
        self.stopped = True


def test_supervised_restarts_an_exited_operator_and_names_the_reason_from_its_own_log_lines(tmp_path) -> None:
    from loqua_devstack import processes
    from loqua_devstack.bench_scale import Supervised

    log = tmp_path / "operator-scale.log"
    log.write_text("[t] [ERROR] [loqua-operator] [-] [-] an error of an earlier run\n")
    started: list[FakeProcess] = []

    def start() -> FakeProcess:
        started.append(FakeProcess(log, processes.free_port()))
        return started[-1]

    op = Supervised(start, log, say=lambda _msg: None)
    with log.open("a") as f:
        f.write("[t] [ERROR] [loqua-operator] [-] [-] leadership lost: leader Lease not renewed; stepping down\n")
    with pytest.raises(RuntimeError, match="keeps exiting"):
        op.text()  # every process it starts has exited too
    assert op.restarts[0] == "leadership lost: leader Lease not renewed; stepping down (exit code None)"
    assert op.restarts[1] == "exit code None"  # the later processes logged nothing: no earlier line reused
    assert started[0].stopped and op.proc is started[-1]


def test_exit_reason_prefers_the_cause_over_retries_and_shutdown_noise() -> None:
    from loqua_devstack.bench_scale import exit_reason

    lines = [
        "[t] [INFO] [loqua-operator] [-] [-] bound to dispatch",
        "[t] [ERROR] [loqua-operator] [-] [-] Handler 'bind' failed with an exception and will try again",
        "[t] [ERROR] [loqua-operator] [-] [-] leadership lost: leader Lease not renewed; stepping down",
        "[t] [ERROR] [loqua-operator] [-] [-] an error occurred during closing of asynchronous generator",
    ]
    assert exit_reason(lines) == "leadership lost: leader Lease not renewed; stepping down"
    assert exit_reason(lines[:2]) == "Handler 'bind' failed with an exception and will try again"
    assert exit_reason(lines[:1]) == ""
