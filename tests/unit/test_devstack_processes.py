"""Process handling of the local stack: detached start, identity check before a kill, clean stop."""

from __future__ import annotations

import shutil
from pathlib import Path

from loqua_devstack import processes


def test_spawn_runs_and_stop_leaves_nothing(tmp_path: Path) -> None:
    sleep = shutil.which("sleep") or "/bin/sleep"
    pid = processes.spawn([sleep, "60"], tmp_path / "sleep.log")
    assert processes.runs(pid, sleep)
    assert not processes.runs(pid, "/usr/bin/something-else")  # a reused pid is never ours
    processes.stop(pid, executable="/usr/bin/something-else")
    assert processes.is_alive(pid), "stop() must not kill a process that is not the expected one"
    processes.stop(pid, timeout=5, executable=sleep)
    assert not processes.is_alive(pid)


def test_free_port_is_bindable() -> None:
    port = processes.free_port()
    assert processes.port_is_free(port)
