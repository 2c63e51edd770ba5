"""Operator settings, read from the environment (the Helm chart's values end up here)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from loqua_operator.scaling import WorkerScaling


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    livekit_url: str = Field(description="LiveKit server URL (ws://, wss://, http:// or https://)")
    livekit_api_key: SecretStr = Field(description="LiveKit API key")
    livekit_api_secret: SecretStr = Field(description="LiveKit API secret")

    agent_ttl_seconds: int = Field(300, ge=0, le=86400, description="default ttlSeconds of an object")
    cleanup_interval_ms: int = Field(60000, ge=1000, le=3_600_000, description="orphan sweep period")
    orphan_grace_seconds: int = Field(120, ge=0, le=86400, description="age before an orphan is removed")
    orphan_rooms_per_sweep: int = Field(200, ge=1, le=100000, description="rooms searched for orphans per sweep")
    agent_presence_grace_seconds: int = Field(15, ge=1, le=3600, description="no agent this long: re-dispatch")
    max_redispatches: int = Field(10, ge=0, le=1000, description="re-dispatches per object before giving up")
    managed_agent_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="agent names the sweep may clean up (comma-separated)"
    )
    log_rate_limit: float = Field(400.0, gt=0, description="log lines per second before dropping")
    log_format: str = Field("text", pattern="^(text|json)$", description="text or json")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    region: str = Field("local", min_length=1, max_length=63, description="region label on metrics")
    http_host: str = Field(
        "0.0.0.0", min_length=1, description="address the metrics/health and webhook servers bind (all in a pod)"
    )
    metrics_port: int = Field(9100, ge=0, le=65535)
    webhook_port: int = Field(8090, ge=0, le=65535)
    webhook_enabled: bool = True
    leader_election: bool = Field(True, description="hold a Lease so only one replica acts")
    lease_name: str = "loqua-operator-leader"
    lease_namespace: str = Field("", description="namespace of the Lease (default: POD_NAMESPACE or default)")
    pod_name: str = ""
    pod_namespace: str = ""
    livekit_retry_base_seconds: float = Field(
        1.0, gt=0, le=60, description="first LiveKit retry delay; doubles per attempt (1, 2, 4 s)"
    )
    livekit_retry_attempts: int = Field(3, ge=0, le=10, description="LiveKit retries inside one reconcile")
    livekit_timeout_seconds: float = Field(10.0, gt=0, le=120)
    liveness_loop_stall_seconds: float = Field(
        10.0, ge=2, le=600, description="/healthz fails when the event loop has not run for this long"
    )
    liveness_watch_stall_seconds: float = Field(
        150.0, ge=10, le=3600, description="/healthz fails when a watch stream is silent this long (bookmarks ~60 s)"
    )
    crd_wait_seconds: float = Field(
        120.0, ge=1, le=3600, description="at start, wait this long for the AgentDispatch CRD to be served, else exit 2"
    )

    demand_scaling: list[WorkerScaling] = Field(
        default_factory=list,
        description="worker Deployments sized from demand (JSON list, written by the chart; empty = none)",
    )
    demand_scaling_interval_seconds: float = Field(
        2.0, ge=0.2, le=300, description="how often demand is counted and worker replicas are set"
    )
    demand_scaling_namespace: str = Field("", description="namespace of the worker Deployments (default POD_NAMESPACE)")

    @field_validator("managed_agent_names", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("livekit_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("must start with ws://, wss://, http:// or https://")
        return value.rstrip("/")

    @property
    def livekit_http_url(self) -> str:
        """LiveKit's Twirp API is plain HTTP(S) on the same port as the WebSocket endpoint."""
        return self.livekit_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)

    @property
    def cleanup_interval_seconds(self) -> float:
        return self.cleanup_interval_ms / 1000.0
