"""A small TTL cache with an injectable clock, that can also hand out stale entries.

Stale reads are the point: while the API is down a session uses the last known user context
instead of none. Thread-safe because with ``JOB_EXECUTOR=thread`` several jobs (each on its own
event loop) share one process-wide cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic, max_entries: int = 1024) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl > 0 and max_entries >= 1")
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._lock = threading.Lock()
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    @property
    def ttl(self) -> float:
        return self._ttl

    def get(self, key: K) -> V | None:
        """The value if stored less than ``ttl`` seconds ago, else ``None``."""
        with self._lock:
            item = self._items.get(key)
            if item is None or self._clock() - item[0] >= self._ttl:
                return None
            return item[1]

    def get_stale(self, key: K) -> V | None:
        """The last stored value however old (for degraded operation), else ``None``."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[1]

    def set(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = (self._clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def invalidate(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
