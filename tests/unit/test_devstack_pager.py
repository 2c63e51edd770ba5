"""The pager records each alert of an Alertmanager notification, over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loqua_devstack import pager, processes

NOTIFICATION = {
    "version": "4",
    "receiver": "pager",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "LoquaLiveKitUnreachable", "namespace": "loqua-system", "severity": "critical"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "LoquaDispatchFailures", "namespace": "loqua-system"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "2026-01-01T00:05:00Z",
        },
    ],
}


def test_one_page_per_alert() -> None:
    when = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    pages = pager.pages_from_notification(NOTIFICATION, when)
    assert [(p["alertname"], p["status"]) for p in pages] == [
        ("LoquaLiveKitUnreachable", "firing"),
        ("LoquaDispatchFailures", "resolved"),
    ]
    assert pages[0]["labels"]["namespace"] == "loqua-system"
    assert pages[0]["received"] == "2026-01-01T00:01:00.000+00:00"
    assert "LoquaLiveKitUnreachable" in pager.format_pages(pages)


def test_not_a_notification_is_refused() -> None:
    with pytest.raises(ValueError, match="alerts"):
        pager.pages_from_notification({"foo": 1}, datetime.now(UTC))


def test_served_over_http(tmp_path: Path) -> None:
    port = processes.free_port()
    record = tmp_path / "pages.jsonl"
    threading.Thread(target=pager.serve, args=(port, record), daemon=True).start()
    processes.wait_until(lambda: processes.http_ok(f"http://127.0.0.1:{port}/healthz"), "pager", 10)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/alerts", data=json.dumps(NOTIFICATION).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read()) == {"recorded": 2}
    bad = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", data=b"[]", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=5)
    assert err.value.code == 400
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/pages", timeout=5) as resp:
        got = json.loads(resp.read())["pages"]
    assert [p["status"] for p in got] == ["firing", "resolved"] == [p["status"] for p in pager.read_pages(record)]
