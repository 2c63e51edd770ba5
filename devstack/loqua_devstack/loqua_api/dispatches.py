"""The web backend's part in Kubernetes: one AgentDispatch per (room, agent name), ensured by
server-side apply under a deterministic name, read and watched with the API's own credentials.

The API's ServiceAccount may only create/get/patch/watch AgentDispatch objects in one namespace
(the chart's optional web-backend RBAC); nothing here lists, deletes or touches status. The official
client is synchronous, so every call runs in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

GROUP = "agents.loqua.app"
VERSION = "v1alpha1"
PLURAL = "agentdispatches"
KIND = "AgentDispatch"
FIELD_MANAGER = "loqua-api"
# The CRD's rules for spec.room and spec.agentName (deploy/crds): checked here first, so bad input
# is a clear 400 rather than the API server's 422. Always with fullmatch: Python's `$` also matches
# before a trailing newline, the CEL (RE2) rule of the CRD does not.
ROOM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
ROOM_MAX = 128
AGENT_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
AGENT_NAME_MAX = 63
# Phases in which the LiveKit dispatch exists (the operator's Dispatched condition is True).
BOUND_PHASES = ("Dispatched", "Active", "Idle")


class KubeUnavailableError(Exception):
    """The Kubernetes API refused or could not be reached; ``reason`` is safe to show (no secrets)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def dispatch_name(room: str, agent_name: str) -> str:
    """The object's name for (room, agent name): the same for every call, a valid DNS-1123 name.

    Readable parts (the room folded to ``[a-z0-9-]``, the agent name) plus a hash of the exact pair,
    so rooms that fold alike (``Lesson_1`` / ``lesson.1``) still get objects of their own.
    """
    digest = hashlib.sha256(f"{room}\0{agent_name}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9-]+", "-", room.lower()).strip("-")[:40].strip("-")
    return "-".join(p for p in (slug, agent_name[:40].strip("-"), digest) if p)


def manifest(name: str, namespace: str, room: str, agent_name: str, ttl_seconds: int | None) -> dict[str, Any]:
    """What the API applies: only the fields it owns (no status, no ttl unless configured)."""
    spec: dict[str, Any] = {"room": room, "agentName": agent_name}
    if ttl_seconds is not None:
        spec["ttlSeconds"] = ttl_seconds
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "spec": spec,
    }


@dataclass(frozen=True)
class DispatchView:
    """The learner-facing summary of an AgentDispatch object."""

    name: str
    uid: str
    resource_version: str
    deleting: bool
    status: dict[str, Any]

    @classmethod
    def of(cls, obj: dict[str, Any]) -> DispatchView:
        meta = obj.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            resource_version=meta.get("resourceVersion", ""),
            deleting=bool(meta.get("deletionTimestamp")),
            status=obj.get("status") or {},
        )

    @property
    def phase(self) -> str:
        return self.status.get("phase") or "Pending"

    @property
    def dispatch_id(self) -> str | None:
        return self.status.get("dispatchId") or None

    @property
    def bound(self) -> bool:
        """The operator has a live LiveKit dispatch for it (or has given up: Failed)."""
        return (self.dispatch_id is not None and self.phase in BOUND_PHASES) or self.phase == "Failed"


def _reason(exc: ApiException) -> str:
    if exc.status == 403:
        return "the API's Kubernetes credentials may not do this (check the web-backend RBAC)"
    if exc.status == 404:
        return "the AgentDispatch CRD is not installed (kubectl apply -f deploy/crds/)"
    return f"the Kubernetes API answered {exc.status} {exc.reason}"


class Dispatches:
    """AgentDispatch objects of one namespace, through one ``ApiClient``."""

    def __init__(self, namespace: str, kubeconfig: Path | None, request_timeout: float = 10.0) -> None:
        self.namespace = namespace
        self.request_timeout = request_timeout
        if kubeconfig is not None:
            client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
        else:
            cfg = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=cfg)
            client = kubernetes.client.ApiClient(cfg)
        self._client = client
        self._custom = kubernetes.client.CustomObjectsApi(client)

    def close(self) -> None:
        self._client.close()

    async def apply(self, room: str, agent_name: str, ttl_seconds: int | None) -> tuple[DispatchView, bool]:
        """Server-side apply of the (room, agent name) object; True when this call created it."""
        name = dispatch_name(room, agent_name)
        body = manifest(name, self.namespace, room, agent_name, ttl_seconds)

        def call() -> tuple[dict[str, Any], int]:
            # Raw response: the generated client maps only 200 to a body, and 201 (created) is
            # exactly what tells a first join from a refresh.
            resp = self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
                _request_timeout=self.request_timeout,
                _preload_content=False,
            )
            return json.loads(resp.data), int(resp.status)

        try:
            data, status = await asyncio.to_thread(call)
        except ApiException as exc:
            raise KubeUnavailableError(_reason(exc)) from None
        except Exception as exc:  # connection refused, TLS, timeout
            raise KubeUnavailableError(f"the Kubernetes API could not be reached ({type(exc).__name__})") from None
        return DispatchView.of(data), status == 201

    async def get(self, room: str, agent_name: str) -> DispatchView | None:
        return await self.get_by_name(dispatch_name(room, agent_name))

    async def wait_bound(self, view: DispatchView, timeout: float) -> DispatchView:
        """Watch the object until the operator has bound it (or failed, or ``timeout`` passed);
        returns the last state seen. A deleted object ends the wait as well."""
        if view.bound or timeout <= 0:
            return view
        deadline = time.monotonic() + timeout
        selector = f"metadata.name={view.name}"
        latest = view

        def watch(rv: str, seconds: int) -> tuple[DispatchView | None, bool]:
            w = kubernetes.watch.Watch()
            try:
                for event in w.stream(
                    self._custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=selector,
                    resource_version=rv,
                    timeout_seconds=seconds,
                    _request_timeout=seconds + 5,
                ):
                    if event["type"] == "DELETED":
                        return DispatchView.of(event["object"]), True
                    if event["type"] in ("ADDED", "MODIFIED"):
                        seen = DispatchView.of(event["object"])
                        if seen.bound or time.monotonic() >= deadline:
                            return seen, True
                        nonlocal latest
                        latest = seen
            finally:
                w.stop()
            return None, False

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return latest
            try:
                seen, done = await asyncio.to_thread(watch, latest.resource_version, max(1, math.ceil(remaining)))
            except ApiException as exc:
                if exc.status == 410:  # resourceVersion too old: start from a fresh read
                    fresh = await self.get_by_name(view.name)
                    if fresh is None or fresh.bound:
                        return fresh or latest
                    latest = fresh
                    continue
                raise KubeUnavailableError(_reason(exc)) from None
            except Exception as exc:
                raise KubeUnavailableError(f"the Kubernetes API could not be reached ({type(exc).__name__})") from None
            if done and seen is not None:
                return seen

    async def get_by_name(self, name: str) -> DispatchView | None:
        def call() -> dict[str, Any]:
            return self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=self.request_timeout
            )

        try:
            return DispatchView.of(await asyncio.to_thread(call))
        except ApiException as exc:
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
            if exc.status == 404 and PLURAL in body:  # the object is missing (not the whole CRD)
                return None
            raise KubeUnavailableError(_reason(exc)) from None
        except Exception as exc:
            raise KubeUnavailableError(f"the Kubernetes API could not be reached ({type(exc).__name__})") from None
