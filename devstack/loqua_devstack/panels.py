"""PNGs of the dashboard's key panels, drawn from Prometheus' ``query_range`` (no Grafana: AGPL).

The queries are the panels' own, read from files/dashboard.json, with the dashboard's variables
filled as Grafana would: ``$namespace`` = the release's namespace, ``$__rate_interval`` = four
scrape intervals. One PNG per panel, written under ``.devstack/panels/``.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "loqua-agents" / "files" / "dashboard.json"
KEY_PANELS = (
    "LiveKit reachable",
    "AgentDispatch objects by phase",
    "Dispatches",
    "Sessions and capacity",
    "Sessions",
    "Loqua API requests by status",
)


def panel_queries(dashboard: Path = DASHBOARD) -> dict[str, list[tuple[str, str]]]:
    """Panel title -> [(expr, legendFormat)] for every panel with PromQL targets."""
    panels = json.loads(dashboard.read_text())["panels"]
    out: dict[str, list[tuple[str, str]]] = {}
    for panel in [q for p in panels for q in [p, *p.get("panels", [])]]:
        targets = [(t["expr"], t.get("legendFormat", "")) for t in panel.get("targets", []) if t.get("expr")]
        if targets:
            out.setdefault(panel["title"], []).extend(targets)
    return out


def fill_variables(expr: str, namespace: str, scrape_interval_s: float) -> str:
    return expr.replace("$namespace", namespace).replace("$__rate_interval", f"{int(4 * scrape_interval_s)}s")


def _legend(fmt: str, labels: dict[str, str], expr: str) -> str:
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or expr[:60]


def render(
    prometheus_url: str,
    out_dir: Path,
    namespace: str,
    start: float,
    end: float | None = None,
    scrape_interval_s: float = 10,
    titles: tuple[str, ...] = KEY_PANELS,
) -> list[Path]:
    """One PNG per panel of ``titles`` over [start, end]; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    end = end or time.time()
    step = max(scrape_interval_s, (end - start) / 300)
    queries = panel_queries()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for title in titles:
        fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
        drawn = 0
        for expr, legend in queries[title]:
            resp = httpx.get(
                f"{prometheus_url}/api/v1/query_range",
                params={
                    "query": fill_variables(expr, namespace, scrape_interval_s),
                    "start": start,
                    "end": end,
                    "step": step,
                },
                timeout=30,
            )
            resp.raise_for_status()
            for series in resp.json()["data"]["result"]:
                xs = [datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=_legend(legend, series["metric"], expr))
                drawn += 1
        ax.set_title(f"{title}  ({namespace})")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
        fig.autofmt_xdate()
        fig.tight_layout()
        path = out_dir / (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") + ".png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
