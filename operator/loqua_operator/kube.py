"""The operator's direct Kubernetes calls (besides kopf's watches): status, deletion, holders, Leases.

The official client is synchronous; calls run in a thread so the event loop never blocks. Every call
has a timeout (a partitioned API server must not hang the operator), and every write passes the
leader write gate first.
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.rest import ApiException

from loqua_operator.leader import WriteGate
from loqua_operator.model import DispatchKey, ObjectRef

GROUP = "agents.loqua.app"
VERSION = "v1alpha1"
PLURAL = "agentdispatches"
KIND = "AgentDispatch"
CALL_TIMEOUT = 5.0  # seconds; shorter than lease duration - renew deadline (see leader.py)
LIST_TIMEOUT = 30.0  # a paged list of many objects
PAGE = 500
WORKERS = 16  # concurrent object calls (the client is synchronous: one thread per call in flight)
T = TypeVar("T")
# Writes made inside one sweep (the sweep task sets a fresh counter), so concurrent handlers don't count.
sweep_writes: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("sweep_writes", default=None)


class CrdNotServed(RuntimeError):
    """The AgentDispatch CRD is not installed (or not served yet): the message says what to do."""


def error_text(exc: BaseException) -> str:
    """An error for a log line: an ApiException's str() carries every response header, its status
    and reason say enough."""
    return f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)


def load_config() -> None:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config.

    urllib3's own retries are off: a call that timed out must not be re-sent seconds later by a
    thread we stopped waiting for (it could land after leadership moved on). Callers retry.
    """
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    config = kubernetes.client.Configuration.get_default_copy()
    config.retries = False
    # One kept-alive connection per worker thread: under a burst none is discarded and re-handshaken.
    config.connection_pool_maxsize = WORKERS
    kubernetes.client.Configuration.set_default(config)


def _field_value(value: str) -> str:
    # Field selector values escape backslash, comma and equals (room names allow none today).
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


class Kube:
    def __init__(self, namespaces: list[str] | None = None, gate: WriteGate | None = None) -> None:
        # kopf accepts glob patterns (``lq-*``); those are listed cluster-wide and filtered here.
        self._patterns = list(namespaces or [])
        self._namespaces = [] if any(set(ns) & set("*?[!") for ns in self._patterns) else self._patterns
        self.gate = gate or WriteGate(elected=False)
        self._custom = kubernetes.client.CustomObjectsApi()
        # The Lease has a client (a connection pool) of its own, used from the renewal thread (leader.py):
        # a renewal never queues behind a burst of status writes, for a thread or for a connection.
        self._coord = kubernetes.client.CoordinationV1Api(kubernetes.client.ApiClient())
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="kube")
        # A call waits for one of the pool's threads here, before its deadline starts: under a burst of
        # thousands of objects, queueing in the pool used up the 5 s and ~11 % of the binds of a 9,000
        # burst failed unsent and waited kopf's 60 s retry.
        self._slots = asyncio.Semaphore(WORKERS)
        self.writes = 0  # Kubernetes writes made (status patches, deletions), for the per-sweep figure

    def watches(self, namespace: str) -> bool:
        if not self._patterns:
            return True
        included = [p for p in self._patterns if not p.startswith("!")]
        excluded = [p[1:] for p in self._patterns if p.startswith("!")]
        ok = not included or any(fnmatch.fnmatchcase(namespace, p) for p in included)
        return ok and not any(fnmatch.fnmatchcase(namespace, p) for p in excluded)

    async def _run(
        self,
        fn: Callable[..., T],
        timeout: float,
        *args: Any,
        write: str | None = None,
        **kwargs: Any,
    ) -> T:
        """``fn`` in a thread, within ``timeout`` from when a thread is free for it.

        Calls wait for one of the pool's threads without a deadline (backpressure, like client-go's
        rate limiter); then the deadline starts. A call that still waited in the pool past it is never
        sent, and a write asks the gate again in the thread right before it goes out: the caller may
        have stopped waiting, and leadership may have lapsed meanwhile (the gate bounds the call too).
        """
        async with self._slots:
            deadline = time.monotonic() + max(0.1, timeout)

            def call() -> T:
                left = deadline - time.monotonic()
                if left <= 0.05:
                    raise TimeoutError("the call waited for a thread past its deadline; not sent")
                if write is not None:
                    left = min(left, self.gate.check(write))
                kwargs["_request_timeout"] = (min(left, CALL_TIMEOUT), left)
                return fn(*args, **kwargs)

            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._pool, call)
            return await asyncio.wait_for(future, max(0.1, timeout) + 1.0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def serves_agent_dispatches(self) -> bool:
        """API discovery lists AgentDispatch: what kopf's one start-up scan reads to choose its watches."""
        apis = kubernetes.client.ApisApi(self._custom.api_client)
        try:
            groups = await self._run(apis.get_api_versions, CALL_TIMEOUT)
            if not any(g.name == GROUP and any(v.version == VERSION for v in g.versions) for g in groups.groups):
                return False
            found = await self._run(self._custom.get_api_resources, CALL_TIMEOUT, GROUP, VERSION)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.name == PLURAL for r in found.resources)

    async def wait_until_served(self, timeout: float, poll: float = 1.0) -> None:
        """Return once discovery lists AgentDispatch. kopf scans discovery once at start-up and later
        notices a CRD only by its changes: an operator started right after the CRD was applied, before
        discovery listed it, would never watch an AgentDispatch (tests/integration/test_operator_startup.py)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.serves_agent_dispatches():
                    return
                problem = "the API server does not list it"
            except ApiException as exc:
                problem = f"API discovery answered {error_text(exc)}"
            except Exception as exc:  # refused, reset, timed out: the API server is not up or not reachable
                problem = f"API discovery failed: {type(exc).__name__}"
            if time.monotonic() >= deadline:
                raise CrdNotServed(
                    f"{PLURAL}.{GROUP} {VERSION} is not served after {timeout:.0f} s ({problem}): install the "
                    "CRDs first (helm install of helm/loqua-agents, or kubectl apply -f deploy/crds/) and "
                    "check that the operator's credentials reach the API server"
                )
            await asyncio.sleep(poll)

    def _write_timeout(self, what: str) -> float:
        timeout = min(CALL_TIMEOUT, self.gate.check(what))
        self.writes += 1
        counter = sweep_writes.get()
        if counter is not None:
            counter[0] += 1
        return timeout

    async def _list(self, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        namespaces = self._namespaces or [None]
        for ns in namespaces:
            token = None
            while True:
                page = {"limit": PAGE, **params, **({"_continue": token} if token else {})}
                if ns is None:
                    resp = await self._run(
                        self._custom.list_cluster_custom_object, LIST_TIMEOUT, GROUP, VERSION, PLURAL, **page
                    )
                else:
                    resp = await self._run(
                        self._custom.list_namespaced_custom_object, LIST_TIMEOUT, GROUP, VERSION, ns, PLURAL, **page
                    )
                items.extend(resp.get("items", []))
                token = (resp.get("metadata") or {}).get("continue")
                if not token:
                    break
        return [i for i in items if self.watches(i["metadata"]["namespace"])]

    async def list_objects(self) -> list[dict[str, Any]]:
        """Every watched AgentDispatch, a consistent (paged) list from the API server."""
        return await self._list()

    async def holders(self, key: DispatchKey) -> list[tuple[ObjectRef, bool]]:
        """Objects referencing (room, agent name), each with whether it is being deleted.

        A fresh, consistent list from the API server (the CRD declares ``spec.room`` and
        ``spec.agentName`` as selectable fields), so two finalizers never both keep a dispatch.
        """
        selector = f"spec.room={_field_value(key.room)},spec.agentName={_field_value(key.agent_name)}"
        items = await self._list(field_selector=selector)
        return [
            (
                ObjectRef(i["metadata"]["namespace"], i["metadata"]["name"]),
                bool(i["metadata"].get("deletionTimestamp")),
            )
            for i in items
        ]

    async def delete_object(self, ref: ObjectRef, resource_version: str) -> bool:
        """Delete an AgentDispatch only if it is still the version we decided on (TTL expiry);
        False when it is gone or changed meanwhile."""
        timeout = self._write_timeout(f"deleting {ref.namespace}/{ref.name}")
        body = {"preconditions": {"resourceVersion": resource_version}}
        try:
            await self._run(
                self._custom.delete_namespaced_custom_object,
                timeout,
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.name,
                body=body,
                write=f"deleting {ref.namespace}/{ref.name}",
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def patch_status(self, ref: ObjectRef, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the status subresource; the object as written, or None when it is gone."""
        timeout = self._write_timeout(f"status of {ref.namespace}/{ref.name}")
        try:
            return await self._run(
                self._custom.patch_namespaced_custom_object_status,
                timeout,
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.name,
                {"status": status},
                write=f"status of {ref.namespace}/{ref.name}",
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # ---- Lease (the election itself is not gated): synchronous, called from the renewal thread -------
    def read_lease(self, namespace: str, name: str, timeout: float = CALL_TIMEOUT) -> Any | None:
        try:
            return self._coord.read_namespaced_lease(name, namespace, _request_timeout=_timeouts(timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_lease(self, namespace: str, body: dict[str, Any], timeout: float = CALL_TIMEOUT) -> Any:
        return self._coord.create_namespaced_lease(namespace, body, _request_timeout=_timeouts(timeout))

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any], timeout: float = CALL_TIMEOUT) -> Any:
        return self._coord.replace_namespaced_lease(name, namespace, body, _request_timeout=_timeouts(timeout))


def _timeouts(timeout: float) -> tuple[float, float]:
    """(connect, read) for one call that may take ``timeout`` in all."""
    left = max(0.1, timeout)
    return (min(left, CALL_TIMEOUT), left)
