"""kopf's bookkeeping without writes of its own: the object's status is the record of what was handled.

kopf remembers the spec it last handled in an annotation (the diff base) and marks its annotation
prefix with a ``kopf-managed`` annotation: one more PATCH per object on top of the finalizer and our
status write — the most expensive thing a burst does, since the API server absorbs ~80 writes/s here.
The status already says it, the way controller-runtime reconcilers do: ``status.observedGeneration ==
metadata.generation`` means this generation of the spec was handled (our one status writer sets it
with every outcome). So:

- ``HandledGenerationDiffBase`` derives the diff base from that and stores nothing. An object whose
  spec generation is not yet observed (new, or its spec changed) looks new to kopf (cause ``create``);
  one that was handled looks unchanged (``resume`` on the first listing, else nothing to do). While a
  handler's retry is pending (kopf's progress annotation is there), it is not handled yet either, so
  kopf's own backoff runs as before.
- ``QuietProgressStorage`` is kopf's annotation progress storage without the marker: a handler that
  succeeds at its first try leaves no trace (store and purge cancel out in the same patch); only
  retries write progress, as before.

Writes per bound object: kopf's finalizer PATCH and our status PATCH — two (Events aside).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import kopf

BIND_HANDLER = "bind"


class QuietProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations (``<prefix>/<handler id>``), without the ``<prefix>/kopf-managed`` marker."""

    def _store_marker(self, prefix: str, patch: kopf.Patch, body: kopf.Body) -> None:  # kopf 1.45 (pinned)
        return None  # our diff base lives in the status, so no other kopf operator must learn our prefix


class HandledGenerationDiffBase(kopf.DiffBaseStorage):
    """The last handled spec is the current one when the status observed this generation and no retry of
    ``handler_id`` is pending; otherwise nothing was handled (kopf's cause: ``create``). Stores nothing."""

    def __init__(self, progress: kopf.ProgressStorage, handler_id: str = BIND_HANDLER) -> None:
        super().__init__()
        self._progress = progress
        self._handler_id = handler_id

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        """The essence is the spec alone (all the handler reads): kopf's own copies the whole body,
        managedFields included, twice per event — the largest CPU cost of a burst after the handler."""
        return kopf.BodyEssence({"spec": copy.deepcopy(dict(body.get("spec") or {}))})  # type: ignore[typeddict-item]

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if not handled(body, self._progress, self._handler_id):
            return None
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None  # the status write that ended the handler already recorded it


def handled(body: Any, progress: kopf.ProgressStorage, handler_id: str = BIND_HANDLER) -> bool:
    """This generation of the spec was handled: the status observed it and no retry is pending."""
    observed = (body.get("status") or {}).get("observedGeneration")
    generation = (body.get("metadata") or {}).get("generation")
    if observed is None or generation is None or int(observed) != int(generation):
        return False
    return progress.fetch(key=kopf.HandlerId(handler_id), body=body) is None
