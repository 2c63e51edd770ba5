"""The operator's direct Kubernetes calls (besides kopf's watches): holders of a dispatch, Leases.

The official client is synchronous; calls run in a thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from loqua_common import timefmt
from loqua_operator.model import DispatchKey, ObjectRef

GROUP = "agents.loqua.app"
VERSION = "v1alpha1"
PLURAL = "agentdispatches"
KIND = "AgentDispatch"


def load_config() -> None:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def _field_value(value: str) -> str:
    # Field selector values escape backslash, comma and equals (room names allow none today).
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


class Kube:
    def __init__(self, namespaces: list[str] | None = None) -> None:
        # kopf accepts glob patterns (``lq-*``); those are listed cluster-wide and filtered here.
        self._patterns = list(namespaces or [])
        self._namespaces = [] if any(set(ns) & set("*?[!") for ns in self._patterns) else self._patterns
        self._custom = kubernetes.client.CustomObjectsApi()
        self._coord = kubernetes.client.CoordinationV1Api()
        self._core = kubernetes.client.CoreV1Api()

    def watches(self, namespace: str) -> bool:
        if not self._patterns:
            return True
        included = [p for p in self._patterns if not p.startswith("!")]
        excluded = [p[1:] for p in self._patterns if p.startswith("!")]
        ok = not included or any(fnmatch.fnmatchcase(namespace, p) for p in included)
        return ok and not any(fnmatch.fnmatchcase(namespace, p) for p in excluded)

    async def holders(self, key: DispatchKey) -> list[tuple[ObjectRef, bool]]:
        """Objects referencing (room, agent name), each with whether it is being deleted.

        A fresh, consistent list from the API server (the CRD declares ``spec.room`` and
        ``spec.agentName`` as selectable fields), so two finalizers never both keep a dispatch.
        """
        selector = f"spec.room={_field_value(key.room)},spec.agentName={_field_value(key.agent_name)}"

        def fetch() -> list[dict[str, Any]]:
            if not self._namespaces:
                resp = self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector=selector)
                return list(resp.get("items", []))
            items: list[dict[str, Any]] = []
            for ns in self._namespaces:
                resp = self._custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, field_selector=selector)
                items.extend(resp.get("items", []))
            return items

        items = [i for i in await asyncio.to_thread(fetch) if self.watches(i["metadata"]["namespace"])]
        return [
            (
                ObjectRef(i["metadata"]["namespace"], i["metadata"]["name"]),
                bool(i["metadata"].get("deletionTimestamp")),
            )
            for i in items
        ]

    async def delete_object(self, ref: ObjectRef, uid: str | None = None) -> bool:
        """Delete an AgentDispatch (for TTL expiry); False when it is already gone."""
        body = {"preconditions": {"uid": uid}} if uid else None

        def call() -> None:
            self._custom.delete_namespaced_custom_object(GROUP, VERSION, ref.namespace, PLURAL, ref.name, body=body)

        try:
            await asyncio.to_thread(call)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def patch_status(self, ref: ObjectRef, status: dict[str, Any]) -> bool:
        """Merge-patch the status subresource; False when the object is gone."""

        def call() -> None:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, ref.namespace, PLURAL, ref.name, {"status": status}
            )

        try:
            await asyncio.to_thread(call)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object (what ``kubectl describe`` shows), from outside kopf handlers."""
        meta = body.get("metadata") or {}
        now = timefmt.iso_micro(dt.datetime.now(dt.UTC))
        event = {
            "metadata": {"generateName": f"{meta.get('name', 'agentdispatch')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "loqua-operator"},
            "reportingComponent": "loqua-operator",
            "reportingInstance": "loqua-operator",
            "action": reason,
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "eventTime": now,
            "count": 1,
        }
        await asyncio.to_thread(self._core.create_namespaced_event, meta.get("namespace"), event)

    # ---- Lease -----------------------------------------------------------------------------------
    async def read_lease(self, namespace: str, name: str) -> Any | None:
        try:
            return await asyncio.to_thread(self._coord.read_namespaced_lease, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> Any:
        return await asyncio.to_thread(self._coord.create_namespaced_lease, namespace, body)

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> Any:
        return await asyncio.to_thread(self._coord.replace_namespaced_lease, name, namespace, body)
