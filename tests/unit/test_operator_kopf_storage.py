"""kopf's bookkeeping without writes of its own (kopf_storage.py), with kopf's real cause detection."""

from __future__ import annotations

from typing import Any

import kopf
from kopf._cogs.structs import diffs  # pinned kopf version (constraints.txt)
from kopf._core.intents import causes

from loqua_operator.handlers.dispatch import FINALIZER
from loqua_operator.kopf_storage import HandledGenerationDiffBase, QuietProgressStorage

PROGRESS = QuietProgressStorage(prefix="agents.loqua.app")
DIFFBASE = HandledGenerationDiffBase(PROGRESS, "bind")


def body(generation: int = 1, observed: int | None = None, annotations: dict[str, str] | None = None) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "agents.loqua.app/v1alpha1",
        "kind": "AgentDispatch",
        "metadata": {
            "namespace": "ns",
            "name": "a",
            "uid": "u1",
            "generation": generation,
            "finalizers": [FINALIZER],
            "annotations": dict(annotations or {}),
        },
        "spec": {"room": "r", "agentName": "tutor"},
        "status": {} if observed is None else {"phase": "Dispatched", "observedGeneration": observed},
    }
    return kopf.Body(raw)


def cause(b: kopf.Body, initial: bool = False) -> causes.Reason:
    old = DIFFBASE.fetch(body=b)
    new = DIFFBASE.build(body=b)
    diff = diffs.diff(old, new) if old is not None else None
    event = {"type": "MODIFIED", "object": dict(b)}
    return causes.detect_changing_cause(
        finalizer=FINALIZER,
        raw_event=event,
        body=b,
        old=old,
        new=new,
        diff=diff,
        initial=initial,
        resource=None,
        logger=None,
        patch=kopf.Patch(),
        memo=None,
        indices=None,
    ).reason


def test_a_new_object_and_a_changed_spec_are_not_handled_yet() -> None:
    assert cause(body()) == causes.Reason.CREATE
    assert cause(body(generation=2, observed=1)) == causes.Reason.CREATE  # a spec change: bind again
    assert cause(body(generation=2, observed=1), initial=True) == causes.Reason.CREATE


def test_a_handled_generation_is_unchanged_and_resumes_on_the_first_listing() -> None:
    assert cause(body(generation=3, observed=3)) == causes.Reason.NOOP
    assert cause(body(generation=3, observed=3), initial=True) == causes.Reason.RESUME
    labelled = body(generation=3, observed=3)
    labelled["metadata"]["labels"] = {"x": "y"}
    assert cause(labelled) == causes.Reason.NOOP  # metadata changes do not bump the generation


def test_a_pending_retry_is_not_handled_even_with_the_generation_observed() -> None:
    # A Failed status observes the generation too; kopf's retry progress keeps the handler due.
    pending = body(observed=1, annotations={"agents.loqua.app/bind": '{"retries":1,"delayed":"2026-01-01T00:00:00"}'})
    assert cause(pending) == causes.Reason.CREATE


def test_a_first_try_success_leaves_no_patch_and_a_retry_writes_progress() -> None:
    b, patch = body(), kopf.Patch()
    PROGRESS.store(key=kopf.HandlerId("bind"), record={"started": "t", "success": True}, body=b, patch=patch)
    PROGRESS.purge(key=kopf.HandlerId("bind"), body=b, patch=patch)
    DIFFBASE.store(body=b, patch=patch, essence=DIFFBASE.build(body=b))
    assert not patch, patch  # no kopf-managed marker, no last-handled-configuration: no PATCH at all
    PROGRESS.store(key=kopf.HandlerId("bind"), record={"started": "t", "retries": 1}, body=b, patch=patch)
    assert list(patch["metadata"]["annotations"]) == ["agents.loqua.app/bind"]


def test_the_essence_is_the_spec_alone() -> None:
    b = body(observed=1)
    b["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    assert DIFFBASE.build(body=b) == {"spec": {"room": "r", "agentName": "tutor"}}
