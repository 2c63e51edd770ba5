"""The object index: every watched AgentDispatch as last seen, by reference and by room.

Fed from the watch stream (in the event loop, never from a thread) and from our own status writes.
Each change replaces one immutable entry in one step, so a reader never sees an object half-moved.
``synced`` is set once a full, consistent listing from the API server was merged in: nothing that
needs to know every object (the sweep, orphan removal) runs before that. A re-list also drops
objects that vanished while the watch was not looking, and never brings back one whose deletion the
index saw while the listing was in flight (the listing may predate the deletion; a uid never returns).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from loqua_operator.model import AgentDispatch, DispatchKey, ObjectRef, SpecError

log = logging.getLogger(__name__)


def _newer(a: str, b: str) -> bool:
    """resourceVersion ``a`` is at least as new as ``b`` (etcd revisions; opaque strings compare as unknown)."""
    try:
        return int(a) >= int(b)
    except ValueError:
        return True


class ObjectIndex:
    def __init__(self, default_ttl: int, on_change: Callable[[ObjectRef, AgentDispatch | None], None] | None = None):
        self._default_ttl = default_ttl
        self._objects: dict[ObjectRef, AgentDispatch] = {}
        self._by_room: dict[str, frozenset[ObjectRef]] = {}
        self._seq: dict[ObjectRef, int] = {}
        self._counter = itertools.count(1)
        self._on_change = on_change
        self._deleted_while_listing: set[str] | None = None  # uids removed since mark(), until the merge
        self.synced = asyncio.Event()

    # ---- writes (all synchronous: atomic within the event loop) -----------------------------------
    def observe(self, body: Mapping[str, Any], deleted: bool = False) -> AgentDispatch | None:
        """A body from the watch, the API or our own write; returns the entry now indexed."""
        meta = body.get("metadata") or {}
        ref = ObjectRef(str(meta.get("namespace", "")), str(meta.get("name", "")))
        if deleted:
            if self._deleted_while_listing is not None and meta.get("uid"):
                self._deleted_while_listing.add(str(meta["uid"]))  # even if it was never indexed
            self.remove(ref)
            return None
        try:
            obj = AgentDispatch.from_body(body, self._default_ttl)
        except SpecError:
            self.remove(ref)
            return None
        return self.put(obj)

    def put(self, obj: AgentDispatch) -> AgentDispatch:
        old = self._objects.get(obj.ref)
        if old is not None and old.uid == obj.uid and not _newer(obj.resource_version, old.resource_version):
            return old  # an older event arriving after our own write: keep the newer entry
        self._objects[obj.ref] = obj
        self._seq[obj.ref] = next(self._counter)
        if old is None or old.key.room != obj.key.room:
            if old is not None:
                self._unlink(old)
            self._by_room[obj.key.room] = self._by_room.get(obj.key.room, frozenset()) | {obj.ref}
        if self._on_change is not None:
            self._on_change(obj.ref, obj)
        return obj

    def remove(self, ref: ObjectRef) -> None:
        old = self._objects.pop(ref, None)
        self._seq.pop(ref, None)
        if old is not None:
            if self._deleted_while_listing is not None:
                self._deleted_while_listing.add(old.uid)
            self._unlink(old)
            if self._on_change is not None:
                self._on_change(ref, None)

    def _unlink(self, old: AgentDispatch) -> None:
        refs = self._by_room.get(old.key.room, frozenset()) - {old.ref}
        if refs:
            self._by_room[old.key.room] = refs
        else:
            self._by_room.pop(old.key.room, None)

    def mark(self) -> int:
        """A point in the index's history, taken right before a listing starts; see :meth:`merge_listing`."""
        self._deleted_while_listing = set()
        return next(self._counter)

    def merge_listing(self, bodies: Iterable[Mapping[str, Any]], since: int) -> int:
        """Merge a full listing that started at ``mark() == since``: listed objects are upserted (newer
        versions win); indexed objects neither listed nor changed since the listing began are gone.
        Returns how many vanished objects left the index."""
        deleted, self._deleted_while_listing = self._deleted_while_listing or set(), None
        listed: set[ObjectRef] = set()
        for body in bodies:
            if str((body.get("metadata") or {}).get("uid", "")) in deleted:
                continue  # listed before its deletion reached us: it must not come back as a ghost
            obj = self.observe(body)
            if obj is not None:
                listed.add(obj.ref)
        vanished = [ref for ref in self._objects if ref not in listed and self._seq.get(ref, 0) < since]
        for ref in vanished:
            self.remove(ref)
        self.synced.set()
        return len(vanished)

    # ---- reads ------------------------------------------------------------------------------------
    def get(self, ref: ObjectRef) -> AgentDispatch | None:
        return self._objects.get(ref)

    def in_room(self, room: str) -> list[AgentDispatch]:
        return [self._objects[r] for r in sorted(self._by_room.get(room, ())) if r in self._objects]

    def snapshot(self) -> list[AgentDispatch]:
        return list(self._objects.values())

    def keys(self) -> set[DispatchKey]:
        return {o.key for o in self._objects.values()}

    def __len__(self) -> int:
        return len(self._objects)
