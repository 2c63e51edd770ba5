"""Start, probe and stop detached background processes, each in its own process group."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an flock on ``path`` (created when missing); ``on_wait`` tells the user when another
    process holds it and this one waits (two checkouts may build or install at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spawn(cmd: list[str], log_file: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start ``cmd`` detached in a new session (so it outlives the CLI) and return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return proc.pid


def is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); reap it if it is our child, and read its state otherwise.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def runs(pid: int | None, executable: str | None) -> bool:
    """Alive and still running ``executable`` (a pid from an old state file may have been reused)."""
    if not is_alive(pid):
        return False
    if not executable:
        return True
    # Right after spawn() returns, the child may still be inside execve: its cmdline reads empty
    # for a moment (seen about once in 100 starts). Look again briefly before saying "not ours".
    deadline = time.monotonic() + 1.0
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if cmdline or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return any(arg.decode(errors="replace") == executable for arg in cmdline.split(b"\0")[:3])


def group_alive(pgid: int) -> bool:
    """Some member of process group ``pgid`` still runs (zombies aside). A leader that has exited
    can leave members, or its own other threads, that still hold its listening sockets."""
    for stat in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def stop(pid: int | None, timeout: float = 10.0, executable: str | None = None) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``timeout``; returns once no
    member of the group runs, so its ports can be bound again."""
    if not pid or not runs(pid, executable):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not is_alive(pid) and not group_alive(pid):
                return
            time.sleep(0.1)


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float,
    pid: int | None = None,
    log_file: Path | None = None,
) -> None:
    """Poll ``check`` until true; fail early, pointing at the log, when the process has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not is_alive(pid):
            raise RuntimeError(f"{what} exited during start-up; see {log_file}{_tail(log_file)}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s; see {log_file}{_tail(log_file)}")


def _tail(log_file: Path | None, lines: int = 8) -> str:
    if not log_file or not log_file.exists():
        return ""
    tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    return "\n  " + "\n  ".join(tail)


# ---- what a process listens on (the network rule: loopback, or interfaces the stack created) --
def _hex_address(text: str) -> str:
    """An address of /proc/net/{tcp,udp}[6] (hex, 32-bit words in host byte order) as text."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, their children ...)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def listening(pid: int) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of every TCP socket ``pid`` listens on and every UDP socket it has
    bound, read from /proc (its own network namespace)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes or (proto.startswith("tcp") and state != "0A"):  # 0A: LISTEN
                continue
            address, port = local.rsplit(":", 1)
            found.add((proto, _hex_address(address), int(port, 16)))
    return found
