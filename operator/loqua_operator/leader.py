"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it, and the write gate.

Two replicas acting at once would both see "no dispatch" and both create one, or one would delete
the other's dispatch as an orphan from a stale index. So:

- Timing is client-go's: the Lease lasts ``lease_duration`` (15 s); the holder retries every
  ``retry_period`` (2 s) and gives up when it could not renew within ``renew_deadline`` (10 s).
- A standby judges expiry from when *it* observed the Lease record change (its own monotonic clock),
  never by comparing its wall clock with the holder's ``renewTime``.
- Every write (LiveKit and Kubernetes) passes :meth:`WriteGate.check`: it is allowed only while
  leadership was confirmed within the renew deadline, measured from when the last successful renewal
  was *sent*. The gate closes by itself when time passes, even if the renewing task hangs.

Why there is no overlap: a renewal sent at ``t`` reaches the API server after ``t``, so a standby
observes that record at ``t_obs >= t`` and takes over no earlier than ``t_obs + 15 s``. The holder's
gate closes at ``t + 10 s``, and a write it starts before that is abandoned by ``t + 15 s`` (writes
get a timeout no longer than what is left of the Lease; Kubernetes calls time out after 5 s).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubernetes.client.rest import ApiException

from loqua_common import timefmt

log = logging.getLogger(__name__)

LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0


class NotLeader(Exception):
    """A write was refused because leadership is not confirmed within the renew deadline."""


class WriteGate:
    """The one place every write asks "may I?". Always open without leader election."""

    def __init__(
        self,
        elected: bool,
        renew_deadline: float = RENEW_DEADLINE,
        lease_duration: float = LEASE_DURATION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.elected = elected
        self.renew_deadline = renew_deadline
        self.lease_duration = lease_duration
        self._clock = clock
        self._confirmed: float | None = None  # monotonic time the last successful renewal was sent
        self.refused = 0

    def confirm(self, sent_at: float) -> None:
        if self._confirmed is None or sent_at > self._confirmed:
            self._confirmed = sent_at

    def revoke(self) -> None:
        self._confirmed = None

    def is_open(self) -> bool:
        if not self.elected:
            return True
        return self._confirmed is not None and self._clock() - self._confirmed < self.renew_deadline

    def remaining(self) -> float:
        """Seconds a write started now may take before a standby could take over (inf without election)."""
        if not self.elected:
            return float("inf")
        if self._confirmed is None:
            return 0.0
        return self._confirmed + self.lease_duration - self._clock()

    def check(self, what: str) -> float:
        """Raise NotLeader unless writes are allowed; return the timeout the write may use."""
        if not self.is_open():
            self.refused += 1
            raise NotLeader(f"{what} refused: leadership not confirmed within {self.renew_deadline:.0f} s")
        return self.remaining()


class LeaseAction(StrEnum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # we hold it
    TAKE_OVER = "take-over"  # released, or unchanged for a whole lease duration since we saw it change
    WAIT = "wait"  # someone else holds a Lease we saw change less than a lease duration ago


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease whose change means "the holder is alive" (client-go's LeaderElectionRecord)."""

    holder: str | None
    renew_time: str | None  # as written by the holder: compared for change only, never with our clock
    duration_seconds: int
    transitions: int = 0
    acquire_time: str | None = None


def decide(
    record: LeaseRecord | None,
    identity: str,
    observed_at: float | None,
    now: float,
) -> LeaseAction:
    """``observed_at``: our monotonic time when we first saw ``record`` as it is now."""
    if record is None:
        return LeaseAction.CREATE
    if record.holder == identity:
        return LeaseAction.RENEW
    if not record.holder:
        return LeaseAction.TAKE_OVER
    if observed_at is not None and now >= observed_at + record.duration_seconds:
        return LeaseAction.TAKE_OVER
    return LeaseAction.WAIT


def _micro_now() -> str:
    return timefmt.iso_micro(timefmt.utcnow(microseconds=True))


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    renew = spec.renew_time
    acquire = spec.acquire_time
    return LeaseRecord(
        holder=spec.holder_identity,
        renew_time=renew.isoformat() if hasattr(renew, "isoformat") else renew,
        duration_seconds=int(spec.lease_duration_seconds or LEASE_DURATION),
        transitions=int(spec.lease_transitions or 0),
        acquire_time=acquire.isoformat() if hasattr(acquire, "isoformat") else acquire,
    )


class LeaderElector:
    def __init__(
        self,
        kube: Any,
        gate: WriteGate,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")
        self._kube = kube
        self.gate = gate
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock = clock
        self._observed: LeaseRecord | None = None
        self._observed_at: float | None = None
        self.acquired_wall: float | None = None  # time.time() of the acquisition (for logs and tests)

    @property
    def is_leader(self) -> bool:
        return self.gate.is_open()

    def _observe(self, record: LeaseRecord | None) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock()

    def _try_once(self, timeout: float) -> bool:
        """One client-go tryAcquireOrRenew: True when we hold the Lease now (confirmed at send time).
        Synchronous: it runs in a thread, never waiting for the event loop (see ``keep``)."""
        sent = self._clock()
        lease = self._kube.read_lease(self.namespace, self.name, timeout=timeout)
        record = None if lease is None else _record(lease)
        self._observe(record)
        action = decide(record, self.identity, self._observed_at, self._clock())
        if action is LeaseAction.WAIT:
            return False
        now = _micro_now()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "renewTime": now,
            "acquireTime": now,
            "leaseTransitions": 0,
        }
        if record is not None:
            spec["leaseTransitions"] = record.transitions + (0 if action is LeaseAction.RENEW else 1)
            acquired = lease.spec.acquire_time
            if action is LeaseAction.RENEW and hasattr(acquired, "strftime"):
                spec["acquireTime"] = timefmt.iso_micro(acquired)
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        remaining = max(0.1, timeout - (self._clock() - sent))
        try:
            if lease is None:
                written = self._kube.create_lease(self.namespace, body, timeout=remaining)
            else:
                # resourceVersion makes the update conditional: of two contenders only one wins.
                body["metadata"]["resourceVersion"] = lease.metadata.resource_version
                written = self._kube.replace_lease(self.namespace, self.name, body, timeout=remaining)
        except ApiException as exc:
            if exc.status in (409, 422):
                return False
            raise
        self._observe(_record(written))
        self.gate.confirm(sent)
        if action is not LeaseAction.RENEW:
            self.acquired_wall = time.time()
            log.info("acquired leader Lease %s/%s as %s (%s)", self.namespace, self.name, self.identity, action)
        return True

    async def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        announced = False
        while True:
            try:
                if await asyncio.to_thread(self._try_once, self.renew_deadline):
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
                        "leader election: Lease %s/%s unavailable (HTTP %s)", self.namespace, self.name, exc.status
                    )
            except Exception as exc:  # timeouts and connection errors: keep trying
                log.warning(
                    "leader election: Lease %s/%s unreachable: %s", self.namespace, self.name, type(exc).__name__
                )
            await asyncio.sleep(self.retry_period)

    async def release(self) -> None:
        """On a clean stop, hand the Lease back (client-go's ReleaseOnCancel) so a standby need not wait
        out the lease duration. Best effort: a failure only means the standby waits."""
        if not self.gate.is_open():
            return
        self.gate.revoke()  # stop writing first
        try:
            if await asyncio.to_thread(self._release):
                log.info("released leader Lease %s/%s", self.namespace, self.name)
        except Exception as exc:
            log.warning("could not release leader Lease: %s", type(exc).__name__)

    def _release(self) -> bool:
        lease = self._kube.read_lease(self.namespace, self.name, timeout=2.0)
        if lease is None or lease.spec.holder_identity != self.identity:
            return False
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease.metadata.resource_version,
            },
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": _record(lease).transitions},
        }
        self._kube.replace_lease(self.namespace, self.name, body, timeout=2.0)
        return True

    async def keep(self) -> str:
        """Renew every retry period until renewal did not succeed within the renew deadline, or another
        replica holds the Lease; then return why (leadership is lost, the gate is closed).

        The renewals run on a thread of their own, like client-go's renewal goroutine: a burst that keeps
        the event loop busy for seconds (thousands of objects at once) must not delay them, and the gate
        is confirmed from the thread the moment a renewal succeeds.
        """
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        stop = threading.Event()

        def report(reason: str) -> None:
            loop.call_soon_threadsafe(lambda: lost.done() or lost.set_result(reason))

        thread = threading.Thread(target=self._renew, args=(stop, report), name="lease-renewal", daemon=True)
        thread.start()
        try:
            return await lost
        finally:
            stop.set()

    def _renew(self, stop: threading.Event, report: Callable[[str], None]) -> None:
        while not stop.wait(self.retry_period):
            left = self.gate.remaining() - (self.lease_duration - self.renew_deadline)  # time to the deadline
            if left <= 0:
                reason = f"leader Lease not renewed within the renew deadline ({self.renew_deadline:.0f} s)"
                break
            try:
                if self._try_once(left):
                    continue
                reason = (
                    f"leader Lease {self.namespace}/{self.name} is held by {self._observed and self._observed.holder}"
                )
                break
            except ApiException as exc:
                log.warning("could not renew leader Lease (HTTP %s)", exc.status)
            except Exception as exc:  # timeouts and network errors from the client
                log.warning("could not renew leader Lease: %s", type(exc).__name__)
        else:
            return  # stopped: keep() was cancelled
        if stop.is_set():
            return  # a clean stop raced the last renewal (release() handed the Lease back)
        self.gate.revoke()
        log.error("leadership lost: %s; stepping down", reason)
        report(reason)
