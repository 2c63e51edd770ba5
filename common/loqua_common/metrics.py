"""The small HTTP side door of each process: ``/metrics``, ``/healthz``, ``/readyz``.

A stdlib ``ThreadingHTTPServer`` in a daemon thread: scrapes and probes keep working while the
asyncio loop is busy or blocked, which is exactly when a probe should still get an answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import prometheus_client
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = ["HealthCheck", "ServerHandle", "duration_buckets", "serve_http"]

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool | tuple[bool, str]]
"""Returns healthy, or (healthy, reason); the reason is the response body."""

_PLAIN = "text/plain; charset=utf-8"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def duration_buckets() -> tuple[float, ...]:
    """Histogram buckets (seconds) for request durations: 5 ms to 10 s, roughly x2.5 per step.

    Shared so that operator and worker histograms can be aggregated and compared in one query.
    """
    return _DURATION_BUCKETS


class ServerHandle:
    """A running metrics/health server. ``port`` is the bound port (useful with ``port=0``)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port; safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe(health: HealthCheck | None) -> tuple[bool, str]:
    if health is None:
        return True, "ok"
    try:
        result = health()
    except Exception as exc:  # a broken check is a failed probe, not a crashed server
        log.warning("health check raised %s: %s", type(exc).__name__, exc)
        return False, f"health check failed: {type(exc).__name__}"
    if isinstance(result, tuple):
        ok, reason = result
        return bool(ok), reason or ("ok" if ok else "unhealthy")
    return bool(result), "ok" if result else "unhealthy"


def _handler_class(
    registry: Collector, health: HealthCheck | None, ready: HealthCheck | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "loqua"
        sys_version = ""

        def do_GET(self) -> None:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            if path == "/metrics":
                try:
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    body = encoder(registry)
                except Exception as exc:
                    log.exception("metrics collection failed")
                    self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"collection failed: {type(exc).__name__}\n")
                    return
                self._send(HTTPStatus.OK, body, content_type)
            elif path in ("/healthz", "/readyz"):
                ok, reason = _probe(ready if path == "/readyz" and ready is not None else health)
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
            else:
                self._send(HTTPStatus.NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n")

        def _send(self, status: HTTPStatus, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            # Probes every few seconds would drown the log; keep them at DEBUG.
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def serve_http(
    port: int,
    host: str = "0.0.0.0",
    registry: Collector = prometheus_client.REGISTRY,
    health: HealthCheck | None = None,
    ready: HealthCheck | None = None,
) -> ServerHandle:
    """Serve ``GET /metrics`` (Prometheus text), ``/healthz`` and ``/readyz`` in a daemon thread.

    ``/healthz`` (liveness) answers 200 with the reason from ``health`` (default "ok"), or 503 when it
    reports unhealthy or raises; ``/readyz`` does the same with ``ready`` (default: ``health``), so a
    process can be alive but not ready, like a standby replica. ``port=0`` picks a free port; read it
    from the returned handle.
    """
    server = ThreadingHTTPServer((host, port), _handler_class(registry, health, ready))
    server.daemon_threads = True  # a hung scrape must not block interpreter exit
    bound = server.server_address[1]
    # serve_forever checks for shutdown once per poll interval: 0.1 s keeps close() quick (tests,
    # SIGTERM) at the price of ten idle wake-ups a second.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"http-metrics-{bound}", daemon=True
    )
    thread.start()
    return ServerHandle(server, thread)
