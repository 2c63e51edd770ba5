"""Debian packages the stack and the tests need, installed once with apt-get (one home for all of them).

Groups name what a package is for, so a message can say why it is being installed. Only the standard
library (and the Go builder's process helpers) is used: this runs before other packages are needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loqua_devstack.binaries import run_logged
from loqua_devstack.processes import exclusive_lock

# What each group is for -> its packages. Add a group rather than a second installer.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "browser": ("headless Chromium for the learner page's browser tests", ("chromium", "chromium-driver")),
    "node": (
        "the local node: container runtime, CNI plugins, kube-proxy's iptables, the API server's bridge forwarder",
        ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "socat"),
    ),
    "image": (
        "building deploy/Dockerfile without Docker, on a base made from Debian's packages",
        ("buildah", "debootstrap"),
    ),
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


class DebianError(RuntimeError):
    """A package could not be installed; the message says which, why, and what to run by hand."""


def _log(msg: str) -> None:
    print(f"[loqua-dev debian] {msg}", file=sys.stderr, flush=True)


def installed(package: str) -> bool:
    """Whether dpkg lists ``package`` as installed."""
    if not shutil.which("dpkg-query"):
        return False
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", package], capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and out.stdout.strip() == "installed"


def missing(groups: list[str] | None = None) -> list[str]:
    """Packages of ``groups`` (default: all) that are not installed yet."""
    wanted = [p for g in (groups or list(GROUPS)) for p in GROUPS[g][1]]
    return [p for p in dict.fromkeys(wanted) if not installed(p)]


def _apt_lock() -> contextlib.AbstractContextManager[None]:
    """One of our installers at a time on this machine (apt's own lock would make the second fail)."""
    return exclusive_lock(
        Path(os.environ.get("TMPDIR", "/tmp")) / "loqua-agents-apt.lock",
        lambda: _log("another install of Debian packages is running; waiting for it"),
    )


def _apt(args: list[str], log_file: Path) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    rc = run_logged(["apt-get", *args], None, log_file, env, _log)
    if rc != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-12:])
        raise DebianError(f"`apt-get {' '.join(args)}` failed (exit {rc}); full log: {log_file}\n{tail}")


def ensure(groups: list[str] | None = None, log_dir: Path | None = None) -> list[str]:
    """Install the missing packages of ``groups`` (default: all); return what was installed."""
    unknown = sorted(set(groups or []) - set(GROUPS))
    if unknown:
        raise DebianError(f"unknown package groups {unknown}; groups are: {', '.join(GROUPS)}")
    todo = missing(groups)
    if not todo:
        return []
    with _apt_lock():
        todo = missing(groups)
        if not todo:
            return []
        why = "; ".join(
            f"{', '.join(p for p in pkgs if p in todo)}: {what}"
            for what, pkgs in GROUPS.values()
            if set(pkgs) & set(todo)
        )
        names = " ".join(todo)
        if not shutil.which("apt-get"):
            raise DebianError(f"apt-get is not available; install these Debian packages by hand: {names} ({why})")
        if os.geteuid() != 0:
            raise DebianError(f"installing Debian packages needs root; run: sudo apt-get install -y {names} ({why})")
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / "loqua-agents-apt.log"
        _log(f"installing Debian packages {names} ({why}); first time only, a few minutes; log: {log_file}")
        started = time.monotonic()
        _apt(["update", "-q"], log_file)
        _apt(["install", "-y", "-q", "--no-install-recommends", *todo], log_file)
        still = missing(groups)
        if still:
            raise DebianError(f"apt-get finished but {' '.join(still)} is still not installed; see {log_file}")
        _log(f"installed {names} in {time.monotonic() - started:.0f} s")
        return todo


if __name__ == "__main__":  # pragma: no cover - `python -m loqua_devstack.debian [GROUP...]`
    try:
        ensure(sys.argv[1:] or None)
    except DebianError as exc:
        _log(f"error: {exc}")
        sys.exit(1)
