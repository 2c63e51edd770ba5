"""Leader election on a coordination.k8s.io/v1 Lease: only the holder reconciles.

Two replicas of the operator would otherwise both list a room, both see no dispatch and both create
one. The standby waits for the Lease; the leader renews it every ``renew_seconds`` and, if it cannot
renew before the Lease expires, stops (the pod restarts and becomes a standby). The decision is a
pure function of the observed Lease so it is unit-tested without a server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubernetes.client.rest import ApiException

from loqua_common import timefmt
from loqua_operator.kube import Kube

log = logging.getLogger(__name__)


class LeaseAction(StrEnum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # we hold it
    TAKE_OVER = "take-over"  # the holder let it expire (or released it)
    WAIT = "wait"  # someone else holds a live Lease


@dataclass(frozen=True)
class LeaseView:
    holder: str | None
    renew_time: dt.datetime | None
    duration_seconds: int


def decide(lease: LeaseView | None, identity: str, now: dt.datetime) -> LeaseAction:
    if lease is None:
        return LeaseAction.CREATE
    if lease.holder == identity:
        return LeaseAction.RENEW
    if not lease.holder or lease.renew_time is None:
        return LeaseAction.TAKE_OVER
    if now >= lease.renew_time + dt.timedelta(seconds=lease.duration_seconds):
        return LeaseAction.TAKE_OVER
    return LeaseAction.WAIT


def _micro(ts: dt.datetime) -> str:
    return timefmt.iso_micro(ts)


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration_seconds
        self.renew_seconds = renew_seconds
        self.is_leader = False

    async def _try_once(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        lease = await self._kube.read_lease(self.namespace, self.name)
        view = None
        if lease is not None:
            spec = lease.spec
            view = LeaseView(spec.holder_identity, spec.renew_time, spec.lease_duration_seconds or self.duration)
        action = decide(view, self.identity, now)
        if action is LeaseAction.WAIT:
            return False
        spec_body: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "renewTime": _micro(now),
        }
        try:
            if action is LeaseAction.CREATE:
                spec_body["acquireTime"] = _micro(now)
                await self._kube.create_lease(
                    self.namespace,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": spec_body,
                    },
                )
            else:
                if action is LeaseAction.TAKE_OVER:
                    spec_body["acquireTime"] = _micro(now)
                    spec_body["leaseTransitions"] = (lease.spec.lease_transitions or 0) + 1
                else:
                    spec_body["acquireTime"] = _micro(lease.spec.acquire_time or now)
                    spec_body["leaseTransitions"] = lease.spec.lease_transitions or 0
                # resourceVersion makes the update conditional: of two contenders only one wins.
                await self._kube.replace_lease(
                    self.namespace,
                    self.name,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {
                            "name": self.name,
                            "namespace": self.namespace,
                            "resourceVersion": lease.metadata.resource_version,
                        },
                        "spec": spec_body,
                    },
                )
        except ApiException as exc:
            if exc.status in (409, 422):
                return False
            raise
        if action in (LeaseAction.CREATE, LeaseAction.TAKE_OVER):
            log.info("acquired leader Lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True

    async def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        announced = False
        while True:
            try:
                if await self._try_once():
                    self.is_leader = True
                    return
                if not announced:
                    log.info("standing by: another replica holds Lease %s/%s", self.namespace, self.name)
                    announced = True
            except ApiException as exc:
                if exc.status == 404:
                    log.error(
                        "leader election: namespace %r for Lease %s does not exist; set LEASE_NAMESPACE (or "
                        "POD_NAMESPACE) to an existing namespace. Retrying.",
                        self.namespace,
                        self.name,
                    )
                else:
                    log.warning(
                        "leader election: Lease %s/%s unavailable (HTTP %s); retrying",
                        self.namespace,
                        self.name,
                        exc.status,
                    )
            await asyncio.sleep(self.renew_seconds)

    async def keep(self) -> None:
        """Renew until renewal fails for longer than the Lease lasts; then return (leadership lost)."""
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await self._try_once():
                    last_ok = loop.time()
                    continue
                log.error("leader Lease %s/%s was taken by another replica", self.namespace, self.name)
                break
            except ApiException as exc:
                log.warning("could not renew leader Lease (HTTP %s)", exc.status)
            except Exception as exc:  # network errors from the client
                log.warning("could not renew leader Lease: %s", type(exc).__name__)
            if loop.time() - last_ok > self.duration:
                log.error("leader Lease not renewed for %d s; stepping down", self.duration)
                break
        self.is_leader = False
