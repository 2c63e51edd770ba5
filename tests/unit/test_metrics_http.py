"""The metrics/health side door: /metrics, /healthz, /readyz on a background thread."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from loqua_common.metrics import ServerHandle, duration_buckets, serve_http


def get(server: ServerHandle, path: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerHandle]]:
    servers: list[ServerHandle] = []

    def start(**kwargs: object) -> ServerHandle:
        server = serve_http(0, host="127.0.0.1", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_metrics_in_prometheus_text_format(serve: Callable[..., ServerHandle]) -> None:
    registry = CollectorRegistry()
    Counter("loqua_test_things", "things", registry=registry).inc(3)
    Histogram("loqua_test_seconds", "durations", buckets=duration_buckets(), registry=registry).observe(0.2)
    server = serve(registry=registry)
    assert server.port > 0
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "loqua_test_things_total 3.0" in body
    assert 'loqua_test_seconds_bucket{le="0.25"} 1.0' in body
    status, content_type, body = get(server, "/metrics?x=1", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_without_a_check_are_ok(serve: Callable[..., ServerHandle], path: str) -> None:
    assert get(serve(), path) == (200, "text/plain; charset=utf-8", "ok\n")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_follow_the_check(serve: Callable[..., ServerHandle], path: str) -> None:
    state: dict[str, bool | tuple[bool, str]] = {"result": (True, "standby")}
    server = serve(health=lambda: state["result"])
    assert get(server, path)[::2] == (200, "standby\n")
    state["result"] = (False, "LiveKit unreachable")
    assert get(server, path)[::2] == (503, "LiveKit unreachable\n")
    state["result"] = False
    assert get(server, path)[::2] == (503, "unhealthy\n")
    state["result"] = True
    assert get(server, path)[::2] == (200, "ok\n")


def test_a_raising_check_is_a_failed_probe(serve: Callable[..., ServerHandle]) -> None:
    def broken() -> bool:
        raise RuntimeError("secret detail")

    status, _, body = get(serve(health=broken), "/healthz")
    assert (status, body) == (503, "health check failed: RuntimeError\n")


def test_unknown_path_is_404(serve: Callable[..., ServerHandle]) -> None:
    assert get(serve(), "/nope")[0] == 404


def test_close_releases_the_port_and_is_idempotent() -> None:
    server = serve_http(0, host="127.0.0.1")
    port = server.port
    server.close()
    server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    with serve_http(port, host="127.0.0.1") as again:  # the port can be bound again
        assert again.port == port


def test_duration_buckets_span_5ms_to_10s() -> None:
    buckets = duration_buckets()
    assert buckets[0] == 0.005 and buckets[-1] == 10.0
    assert list(buckets) == sorted(set(buckets))


def test_readiness_can_differ_from_liveness() -> None:
    """A standby replica: alive (/healthz 200) but not ready (/readyz 503)."""
    import urllib.error
    import urllib.request

    from loqua_common.metrics import serve_http

    handle = serve_http(0, host="127.0.0.1", health=lambda: (True, "standby"), ready=lambda: (False, "standby"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{handle.port}/healthz", timeout=5) as resp:
            assert resp.status == 200 and resp.read().decode().strip() == "standby"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{handle.port}/readyz", timeout=5)
            raise AssertionError("/readyz answered 200 for a process that is not ready")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and exc.read().decode().strip() == "standby"
    finally:
        handle.close()
