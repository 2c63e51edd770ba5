"""glibc's heap, kept to what the objects need.

Most of the operator's resident memory is C heap (TLS buffers, parsed bodies), not Python objects
(measured with tracemalloc: ~75 MiB of Python objects in ~300 MiB resident at 3,000 objects). glibc
gives each thread that allocates its own arena, up to eight per core, and frees into an arena stay
mapped: a burst's peak lingers, and it differs run to run with which thread allocated what. Two
arenas and a trim after each sweep return it. Elsewhere than glibc (musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("loqua_operator")

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def limit_arenas() -> None:
    """At most ARENAS heap arenas, unless MALLOC_ARENA_MAX is set (glibc reads it itself). Call before
    any thread starts: arenas already made stay."""
    if _LIBC is None or os.environ.get("MALLOC_ARENA_MAX"):
        return
    if not _LIBC.mallopt(M_ARENA_MAX, ARENAS):
        log.debug("mallopt(M_ARENA_MAX) refused; glibc's default arenas stay")


def trim() -> None:
    """Give the heap's free pages back to the system (after a sweep, when a burst's garbage is gone)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
