"""Start livekit-agents' multiprocessing forkserver so that SIGTERM does not kill it.

With ``JOB_EXECUTOR=process`` livekit-agents forks every job process from a multiprocessing
forkserver, which ignores SIGINT but not SIGTERM. A SIGTERM sent to the worker's whole process
group (systemd's default ``KillMode``, ``kill -- -PGID``, a supervisor that signals the group)
kills the forkserver, and every running job process is then reported as "exited with code 255":
the sessions end without final progress or a session record, before the worker could drain.

A signal's "ignore" disposition survives fork and exec (a blocked mask does not: the forkserver is
started through ``_posixsubprocess``, which resets it), so the forkserver is started here, before
the worker's own handlers are installed, with SIGTERM ignored for the few milliseconds of the
spawn. Job processes forked from it inherit the disposition too (livekit-agents ignores SIGTERM
in them anyway); only the worker's main process acts on SIGTERM, and drains.

The preload list is the one livekit-agents 1.x would hand the forkserver itself (registered
plugin packages, then its own warm-up and freeze modules); it sets it again later, which is a
no-op once the server runs.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import signal
import sys

from livekit.agents import Plugin

LIVEKIT_PRELOAD = ["livekit.agents.ipc._preload", "livekit.agents.ipc._preload_freeze"]


def forkserver_preload() -> list[str]:
    """Registered plugin packages, then livekit-agents' warm-up modules (the freeze must be last)."""
    return list(dict.fromkeys(p.package for p in Plugin.registered_plugins)) + LIVEKIT_PRELOAD


def start_forkserver_ignoring_sigterm() -> bool:
    """Start the forkserver with SIGTERM ignored in it; False where there is no forkserver.

    Call from the main thread, before SIGTERM handlers are installed: during the spawn SIGTERM is
    blocked (so one that arrives stays pending for the handler restored afterwards) and ignored
    (the disposition the child inherits).
    """
    if not sys.platform.startswith("linux"):
        return False  # livekit-agents uses "spawn" elsewhere
    multiprocessing.get_context("forkserver").set_forkserver_preload(forkserver_preload())
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return True
