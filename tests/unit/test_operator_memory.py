"""glibc's heap: at most two arenas however many threads allocate; MALLOC_ARENA_MAX still wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loqua_operator import memory

# Eight threads allocate at once, then glibc's malloc_stats() prints one "Arena N:" block per arena.
SCRIPT = """
import ctypes, sys, threading
from loqua_operator import memory
if sys.argv[1] == "limit":
    memory.limit_arenas()
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    keep = [bytearray(4096) for _ in range(2000)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def arenas(mode: str, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}, **env},
        check=True,
    )
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


@pytest.mark.skipif(memory._LIBC is None, reason="not glibc")
def test_threads_share_two_arenas_unless_the_environment_says_otherwise() -> None:
    assert arenas("default") > memory.ARENAS  # what glibc does by itself: an arena per busy thread
    assert arenas("limit") == memory.ARENAS
    assert arenas("limit", MALLOC_ARENA_MAX="4") == 4  # the operator's env is the user's to set
    memory.trim()  # and a trim is safe at any time
