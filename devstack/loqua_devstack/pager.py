"""The devstack's pager: an Alertmanager webhook receiver that records every notification.

``python -m loqua_devstack.pager --port N --record FILE`` listens on 127.0.0.1 only. Each alert of
each notification becomes one JSON line in FILE: when it was received, the alert's name, its
status (firing/resolved), its labels and its startsAt/endsAt. ``GET /pages`` returns them;
``loqua-dev pages`` prints them.
"""

from __future__ import annotations

import argparse
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def pages_from_notification(payload: dict, received: datetime) -> list[dict]:
    """One record per alert of an Alertmanager webhook notification (version 4 payload)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("not an Alertmanager webhook notification: expected a JSON object with an 'alerts' list")
    records = []
    for alert in payload["alerts"]:
        labels = dict(alert.get("labels") or {})
        records.append(
            {
                "received": received.isoformat(timespec="milliseconds"),
                "alertname": labels.get("alertname", ""),
                "status": alert.get("status", payload.get("status", "")),
                "labels": labels,
                "startsAt": alert.get("startsAt"),
                "endsAt": alert.get("endsAt"),
                "receiver": payload.get("receiver", ""),
            }
        )
    return records


def read_pages(record: Path) -> list[dict]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def first_page(pages: list[dict], alertname: str, status: str) -> dict | None:
    """The first page of ``alertname`` with ``status`` (firing/resolved), if any."""
    return next((p for p in pages if p["alertname"] == alertname and p["status"] == status), None)


def format_pages(pages: list[dict]) -> str:
    if not pages:
        return "no pages yet"
    lines = [f"{'RECEIVED':<30} {'STATUS':<9} {'ALERT':<34} LABELS"]
    for p in pages:
        labels = ",".join(f"{k}={v}" for k, v in sorted(p["labels"].items()) if k not in ("alertname",))
        lines.append(f"{p['received']:<30} {p['status']:<9} {p['alertname']:<34} {labels}")
    return "\n".join(lines)


def serve(port: int, record: Path, host: str = "127.0.0.1") -> None:
    lock = threading.Lock()
    record.parent.mkdir(parents=True, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True})
            elif self.path == "/pages":
                with lock:
                    self._send(200, {"pages": read_pages(record)})
            else:
                self._send(404, {"error": f"no route {self.path}; try GET /pages or POST /alerts"})

        def do_POST(self) -> None:
            if self.path != "/alerts":
                self._send(404, {"error": f"no route {self.path}; Alertmanager posts to /alerts"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                pages = pages_from_notification(json.loads(self.rfile.read(length)), datetime.now(UTC))
            except (ValueError, json.JSONDecodeError) as exc:
                self._send(400, {"error": str(exc)})
                return
            with lock, record.open("a") as f:
                for page in pages:
                    f.write(json.dumps(page, sort_keys=True) + "\n")
            for page in pages:
                print(f"page: {page['status']} {page['alertname']} {page['labels']}", flush=True)
            self._send(200, {"recorded": len(pages)})

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"pager listening on http://{host}:{port} (recording to {record})", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True, help="JSON-lines file the pages are appended to")
    args = parser.parse_args()
    serve(args.port, args.record)


if __name__ == "__main__":
    main()
