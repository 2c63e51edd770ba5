"""kopf handlers for AgentDispatch: bind on create/resume/spec change, release in the finalizer."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from loqua_operator import decisions
from loqua_operator.context import OperatorContext
from loqua_operator.dispatcher import Outcome
from loqua_operator.handlers import registry
from loqua_operator.kube import GROUP, PLURAL, VERSION
from loqua_operator.model import DispatchSpec, ObjectRef

log = logging.getLogger("loqua_operator.handlers")
FINALIZER = "agents.loqua.app/dispatch-cleanup"


def _spec(body: kopf.Body, ctx: OperatorContext) -> DispatchSpec:
    spec = dict(body.get("spec") or {})
    if not spec.get("room") or not spec.get("agentName"):
        # The CRD schema refuses these; only a CRD installed without its schema gets here.
        raise kopf.PermanentError("spec.room and spec.agentName are required (is the CRD from deploy/crds/ installed?)")
    return DispatchSpec.from_body(spec, ctx.settings.agent_ttl_seconds)


def _fields(body: kopf.Body, **extra: Any) -> dict[str, Any]:
    spec = body.get("spec") or {}
    return {
        "namespace": body.metadata.namespace,
        "name": body.metadata.name,
        "room": spec.get("room"),
        "agent": spec.get("agentName"),
        **extra,
    }


def post_events(body: kopf.Body, outcome: Outcome) -> None:
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # In-cluster service account or $KUBECONFIG, the same credentials the kubernetes client uses.
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="agents.loqua.app")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="agents.loqua.app", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.peering.standalone = True  # exclusivity comes from the leader Lease (see leader.py)
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300


@kopf.on.resume(GROUP, VERSION, PLURAL, id="bind", registry=registry)
@kopf.on.create(GROUP, VERSION, PLURAL, id="bind", registry=registry)
@kopf.on.update(GROUP, VERSION, PLURAL, id="bind", field="spec", registry=registry)
async def bind(body: kopf.Body, patch: kopf.Patch, retry: int, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    started = time.perf_counter()
    spec = _spec(body, ctx)
    current = dict(body.get("status") or {})
    generation = int(body.metadata.get("generation") or 0)
    try:
        outcome = await ctx.dispatcher.bind(spec, current, generation)
    except Exception:
        ctx.metrics.reconcile_errors.labels("bind").inc()
        raise
    finally:
        ctx.metrics.reconcile_duration.labels("bind").observe(time.perf_counter() - started)
    for key, value in outcome.status.items():
        patch.status[key] = value
    ctx.metrics.phases.set(body.metadata.namespace, body.metadata.name, outcome.status["phase"])
    post_events(body, outcome)
    if outcome.error is not None:
        delay = decisions.retry_delay(retry, base=10.0, cap=120.0)
        log.warning(
            "dispatch failed after retries; next attempt in %.0f s: %s",
            delay,
            outcome.error,
            extra={"fields": _fields(body)},
        )
        raise kopf.TemporaryError(str(outcome.error), delay=delay)
    log.info(
        "bound to dispatch (reused=%s)",
        outcome.status["reused"],
        extra={"fields": _fields(body, dispatch_id=outcome.status["dispatchId"])},
    )


@kopf.on.delete(GROUP, VERSION, PLURAL, id="release", registry=registry)
async def release(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    started = time.perf_counter()
    me = ObjectRef(body.metadata.namespace, body.metadata.name)
    spec_body = body.get("spec") or {}
    if not spec_body.get("room") or not spec_body.get("agentName"):
        ctx.metrics.phases.forget(*me)
        return  # nothing was ever dispatched for an object without room/agent
    spec = _spec(body, ctx)
    try:
        holders = await ctx.kube.holders(spec.key)
        outcome = await ctx.dispatcher.release(me, spec, holders)
    except Exception as exc:
        ctx.metrics.reconcile_errors.labels("release").inc()
        delay = decisions.retry_delay(retry, base=5.0, cap=60.0)
        kopf.event(
            body,
            type="Warning",
            reason="ReleaseFailed",
            message=f"could not remove the LiveKit dispatch yet: {exc}; retrying in {delay:.0f} s",
        )
        log.warning("release failed; retrying in %.0f s: %s", delay, exc, extra={"fields": _fields(body)})
        raise kopf.TemporaryError(str(exc), delay=delay) from None
    finally:
        ctx.metrics.reconcile_duration.labels("release").observe(time.perf_counter() - started)
    ctx.metrics.phases.forget(*me)
    post_events(body, outcome)
    log.info(
        "released: %s",
        outcome.events[0].message if outcome.events else "done",
        extra={"fields": _fields(body, dispatch_id=(body.get("status") or {}).get("dispatchId"))},
    )
