"""kopf handlers for AgentDispatch: two lines each, into the one reconcile path."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from loqua_operator import decisions
from loqua_operator.context import OperatorContext
from loqua_operator.handlers import registry
from loqua_operator.kopf_storage import BIND_HANDLER, HandledGenerationDiffBase, QuietProgressStorage
from loqua_operator.kube import GROUP, PLURAL, VERSION
from loqua_operator.leader import NotLeader
from loqua_operator.livekit_gateway import LiveKitError
from loqua_operator.model import AgentDispatch, SpecError
from loqua_operator.reconciler import fields, post_event

log = logging.getLogger("loqua_operator.handlers")
FINALIZER = "agents.loqua.app/dispatch-cleanup"


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # In-cluster service account or $KUBECONFIG, the same credentials the kubernetes client uses.
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # No bookkeeping writes of kopf's own: what was handled is status.observedGeneration (kopf_storage.py).
    progress = QuietProgressStorage(prefix="agents.loqua.app")
    settings.persistence.progress_storage = progress
    settings.persistence.diffbase_storage = HandledGenerationDiffBase(progress, BIND_HANDLER)
    # kopf mirrors its own log lines at or above this level as Events (reason "Logging"). At INFO that is
    # "Handler 'bind' succeeded" and "Creation is processed" for every object, and "Resuming is processed"
    # for every object on every restart: 10,000 Event POSTs to resume 10,000 objects. Our Events
    # (kopf.event) are posted regardless; kopf's warnings (a handler's retry) still are.
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True  # exclusivity comes from the leader Lease (see leader.py)
    # Every call has a timeout: a partitioned API server must not hang the operator.
    settings.networking.request_timeout = 10
    settings.networking.connect_timeout = 5
    settings.watching.connect_timeout = 5
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300


async def _bind(body: kopf.Body, retry: int, memo: kopf.Memo, resuming: bool) -> None:
    ctx: OperatorContext = memo.ctx
    with ctx.metrics.reconcile_duration.labels("bind").time():
        try:
            result = await ctx.reconciler.bind(body, resuming=resuming)
        except SpecError as exc:
            raise kopf.PermanentError(str(exc)) from None
        except (NotLeader, LiveKitError, Exception):
            ctx.metrics.reconcile_errors.labels("bind").inc()
            raise
    outcome, obj = result.outcome, result.obj
    if outcome is None or obj is None:
        return
    if outcome.permanent:
        log.warning("dispatch failed and will not be retried: %s", outcome.error, extra={"fields": fields(obj)})
        raise kopf.PermanentError(str(outcome.error))
    if outcome.error is not None:
        delay = decisions.retry_delay(retry, base=10.0, cap=120.0)
        log.warning(
            "dispatch failed after retries; next attempt in %.0f s: %s",
            delay,
            outcome.error,
            extra={"fields": fields(obj)},
        )
        raise kopf.TemporaryError(str(outcome.error), delay=delay)
    log.info(
        "bound to dispatch (reused=%s)",
        obj.status.get("reused"),
        extra={"fields": fields(obj, dispatch_id=obj.status.get("dispatchId"))},
    )


# A spec change makes the object unhandled again (its generation is not observed yet), so kopf calls
# the create handler for it: there is no separate update handler.
@kopf.on.resume(GROUP, VERSION, PLURAL, id=BIND_HANDLER, registry=registry)
@kopf.on.create(GROUP, VERSION, PLURAL, id=BIND_HANDLER, registry=registry)
async def bind(body: kopf.Body, reason: kopf.Reason, retry: int, memo: kopf.Memo, **_: Any) -> None:
    await _bind(body, retry, memo, resuming=reason == kopf.Reason.RESUME)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="release", registry=registry)
async def release(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    try:
        obj = AgentDispatch.from_body(body, ctx.settings.agent_ttl_seconds)
    except SpecError:
        return  # nothing was ever dispatched for an object without room/agent
    with ctx.metrics.reconcile_duration.labels("release").time():
        try:
            outcome = await ctx.reconciler.release(obj)
        except Exception as exc:
            ctx.metrics.reconcile_errors.labels("release").inc()
            delay = decisions.retry_delay(retry, base=5.0, cap=60.0)
            post_event(
                obj,
                "Warning",
                "ReleaseFailed",
                f"could not remove the LiveKit dispatch yet: {exc}; retrying in {delay:.0f} s",
            )
            log.warning("release failed; retrying in %.0f s: %s", delay, exc, extra={"fields": fields(obj)})
            raise kopf.TemporaryError(str(exc), delay=delay) from None
    log.info(
        "released: %s",
        outcome.events[0].message if outcome.events else "done",
        extra={"fields": fields(obj, dispatch_id=obj.status.get("dispatchId"))},
    )
