"""Process handling of the local stack: detached start, identity check before a kill, clean stop."""

from __future__ import annotations

import os
import shutil
import socket
import sys
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


def test_listening_names_the_sockets_a_process_listens_on_and_their_addresses() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp6,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as not_listening,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp6.bind(("::1", 0))
        not_listening.bind(("127.0.0.1", 0))
        found = processes.listening(os.getpid())
        assert ("tcp", "127.0.0.1", tcp.getsockname()[1]) in found
        assert ("udp6", "::1", udp6.getsockname()[1]) in found
        assert not any(port == not_listening.getsockname()[1] for _, _, port in found)


def test_descendants_include_children_of_children(tmp_path: Path) -> None:
    sh = shutil.which("sh") or "/bin/sh"
    pid = processes.spawn([sh, "-c", "sleep 60 & sleep 60 & wait"], tmp_path / "sh.log")
    try:
        processes.wait_until(lambda: len(processes.descendants(pid)) == 3, "two children", 10)
        assert processes.descendants(pid)[0] == pid
    finally:
        processes.stop(pid, timeout=5, executable=sh)


def test_stop_returns_only_once_the_whole_group_has_let_go_of_its_ports(tmp_path: Path) -> None:
    """A leader that exits at once can leave a member still listening (CI saw kube-controller-manager
    fail to bind its port on a restart): stop() waits for the group, so a restart can bind."""
    port = processes.free_port()
    holder = tmp_path / "holder.py"
    holder.write_text(
        "import signal, socket, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0)))\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port}))\n"
        "s.listen()\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )
    sh = shutil.which("sh") or "/bin/sh"
    script = f"{sys.executable} {holder} & trap 'exit 0' TERM; wait"
    pid = processes.spawn([sh, "-c", script], tmp_path / "group.log")
    processes.wait_until(lambda: processes.tcp_open("127.0.0.1", port), "the port holder", 10)
    assert processes.group_alive(pid)
    processes.stop(pid, timeout=5, executable=sh)
    assert not processes.group_alive(pid)
    assert processes.port_is_free(port), "stop() returned while a member of the group still held its port"
