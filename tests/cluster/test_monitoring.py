"""The monitoring stack of `make cluster MONITORING=1` on live series (issue 13).

Prometheus and Alertmanager are configured from the chart's own ServiceMonitor and PrometheusRule;
Alertmanager notifies the devstack's pager. These tests ask Prometheus' HTTP API and read the
pager's record back, the way an on-call engineer would see it. They are opt-in (`make
test-monitoring`): the first run builds Prometheus and Alertmanager, and a fault waits out the
rule's `for`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loqua_devstack import cluster as local_cluster
from loqua_devstack import monitoring, pager
from loqua_devstack.services import wait_for
from tests.cluster.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "helm" / "loqua-agents" / "files" / "alerts.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.monitoring,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("LOQUA_MONITORING_TESTS") != "1",
        reason="opt-in: `make test-monitoring` (builds Prometheus/Alertmanager, waits out alert `for`s)",
    ),
]


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", duration))


@pytest.fixture(scope="module")
def monitored(cluster: Cluster) -> Cluster:
    local_cluster.enable_monitoring(cluster.stack, cluster.image)
    return Cluster(cluster.stack, cluster.stack.env(), cluster.image)


def _prom(env: dict[str, str], path: str, **params: Any) -> Any:
    resp = httpx.get(f"{env['PROMETHEUS_URL']}{path}", params=params, timeout=30)
    resp.raise_for_status()
    body = resp.json()
    assert body["status"] == "success", body
    return body["data"]


def _wait_pages(check: Any, what: str, timeout: float) -> Any:
    return wait_for(check, what, timeout, interval=2.0)


def _pages(cluster: Cluster) -> list[dict[str, Any]]:
    return pager.read_pages(monitoring.pager_record(cluster.stack.root))


def _loaded_for(env: dict[str, str], name: str) -> float:
    """An alert's `for` in seconds, as Prometheus loaded it."""
    groups = _prom(env, "/api/v1/rules", type="alert")["groups"]
    return float(next(r["duration"] for g in groups for r in g["rules"] if r["name"] == name))


def test_operator_and_worker_targets_up_and_the_charts_rule_groups_loaded(monitored: Cluster) -> None:
    env = monitored.env
    assert env["PROMETHEUS_URL"].startswith("http://127.0.0.1:")
    assert env["ALERTMANAGER_URL"].startswith("http://127.0.0.1:")

    def up_targets() -> set[str]:
        targets = _prom(env, "/api/v1/targets")["activeTargets"]
        return {t["labels"].get("container", "") for t in targets if t["health"] == "up"}

    assert wait_for(lambda: {"loqua-operator", "loqua-tutor"} <= up_targets(), "operator and worker targets up", 120)
    groups = {g["name"]: g for g in _prom(env, "/api/v1/rules")["groups"]}
    expected = yaml.safe_load(ALERTS.read_text())["groups"]
    assert set(groups) == {g["name"] for g in expected}
    for group in expected:
        assert [r["name"] for r in groups[group["name"]]["rules"]] == [r["alert"] for r in group["rules"]]
    # Each loaded alert's runbook_url names a heading of docs/runbooks.md.
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", RUNBOOKS.read_text(), re.M)}
    for group in groups.values():
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            assert url.split("#")[0].endswith("docs/runbooks.md") and url.split("#", 1)[1] in headings, url
    # The series carry the installation's labels (the ServiceMonitor's podTargetLabels).
    build = _prom(env, "/api/v1/query", query="loqua_tutor_build_info")["result"]
    assert build and build[0]["metric"]["loqua_app_tier"] == "basic-conversation"


DASHBOARD = ROOT / "helm" / "loqua-agents" / "files" / "dashboard.json"
# Series of panel queries that have no data after the main scenario on the local node, and why (issue 13, not done):
NOT_YET_ALIVE_HERE = {
    # kube-state-metrics, which the Go module proxy refuses here (403 "This module version is not
    # available"); cAdvisor's container series are there (the kubelet's --containerd).
    "kube_pod_container_resource_limits",
}


def _panel_queries() -> list[tuple[str, str]]:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [q for p in dashboard["panels"] for q in [p, *p.get("panels", [])]]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if t.get("expr")]


def _as_grafana_would(expr: str) -> str:
    """The dashboard's variables as Grafana fills them: the release's namespace, and
    $__rate_interval = 4 scrape intervals (Grafana's floor for it)."""
    rate_interval = f"{int(4 * _seconds(monitoring.SCRAPE_INTERVAL))}s"
    return expr.replace("$namespace", local_cluster.NAMESPACE).replace("$__rate_interval", rate_interval)


async def test_every_dashboard_panel_has_data_after_the_main_scenario(monitored: Cluster, namespace, lk) -> None:  # type: ignore[no-untyped-def]
    from tests.cluster.test_scenario import test_main_scenario_through_the_pods as main_scenario

    await main_scenario(monitored, namespace, lk)
    await asyncio.sleep(2 * _seconds(monitoring.SCRAPE_INTERVAL))  # the last scrapes after the session ended
    queries = _panel_queries()
    assert queries
    dead, known = [], []
    for title, expr in queries:
        if not _prom(monitored.env, "/api/v1/query", query=_as_grafana_would(expr))["result"]:
            excused = any(series in expr for series in NOT_YET_ALIVE_HERE)
            (known if excused else dead).append(f"{title}: {expr}")
    if known:
        print(f"\npanels with no data on this node (see NOT_YET_ALIVE_HERE): {known}")
    assert not dead, f"{len(dead)} of {len(queries)} panel queries return no series:\n" + "\n".join(dead)


def test_livekit_stopped_pages_then_resolves(monitored: Cluster) -> None:
    env, stack = monitored.env, monitored.stack
    name = "LoquaLiveKitUnreachable"
    rule_for = _loaded_for(env, name)  # the chart's value as installed (monitoring.prometheusRule.for)
    scrape = _seconds(monitoring.SCRAPE_INTERVAL)
    assert not [
        p
        for p in _pages(monitored)
        if p["alertname"] == name and p["status"] == "firing" and not _resolved_after(_pages(monitored), name, p)
    ], "the alert already fires"
    before = len(_pages(monitored))
    stopped_at = time.time()
    stack.stop_part("livekit")  # = `loqua-dev stop livekit`
    try:
        # The operator's leader calls LiveKit at least every orphan sweep (60 s by default).
        firing = _wait_pages(
            lambda: pager.first_page(_pages(monitored)[before:], name, "firing"),
            f"a firing {name} page",
            rule_for + 600,
        )
    finally:
        stack.start_part("livekit")
    started_at = time.time()
    received = datetime.fromisoformat(firing["received"]).timestamp()
    assert firing["labels"]["namespace"] == local_cluster.NAMESPACE
    assert firing["labels"]["severity"] == "critical"
    # From the first scrape that saw livekit_up == 0 to the page: the rule's `for`, plus at most two
    # scrape intervals, plus Prometheus' evaluation interval and Alertmanager's group_wait.
    series = _prom(
        env,
        "/api/v1/query_range",
        query="max(loqua_operator_livekit_up)",
        start=stopped_at - scrape,
        end=received,
        step="1s",
    )["result"]
    zero_at = next(float(t) for t, v in series[0]["values"] if float(v) == 0)
    budget = rule_for + 2 * scrape + _seconds(monitoring.EVALUATION_INTERVAL) + 5
    assert rule_for <= received - zero_at <= budget, (received - zero_at, budget)

    resolved = _wait_pages(
        lambda: pager.first_page(_pages(monitored)[before:], name, "resolved"),
        f"a resolved {name} page",
        600,
    )
    resolved_at = datetime.fromisoformat(resolved["received"]).timestamp()
    print(
        f"\n{name}: livekit stopped -> livekit_up 0 seen {zero_at - stopped_at:.0f} s -> page "
        f"{received - stopped_at:.0f} s after the stop; started again -> resolved page "
        f"{resolved_at - started_at:.0f} s after the start"
    )


def _resolved_after(pages: list[dict[str, Any]], name: str, firing: dict[str, Any]) -> bool:
    return any(
        p["alertname"] == name and p["status"] == "resolved" and p["received"] > firing["received"] for p in pages
    )


async def test_agent_jwt_made_invalid_pages_auth_failures(monitored: Cluster, namespace: str) -> None:
    """The agent's JWT in the Secret is replaced by one the Loqua API does not accept (signed with
    another key): a learner's session makes the worker's token exchange fail with 401, and
    LoquaAgentAuthFailureRateHigh pages; the right JWT back, the page resolves."""
    from loqua_devstack.learner import Learner, create_user
    from loqua_devstack.loqua_api.tokens import mint_agent_token
    from tests.cluster.conftest import ad_manifest, until

    name = "LoquaAgentAuthFailureRateHigh"
    stack, env = monitored.stack, monitored.env
    worker = monitored.deployment("worker")
    before = len(_pages(monitored))

    def restart_workers() -> None:
        monitored.kubectl("-n", local_cluster.NAMESPACE, "rollout", "restart", f"deploy/{worker}")
        monitored.kubectl(
            "-n", local_cluster.NAMESPACE, "rollout", "status", f"deploy/{worker}", "--timeout=600s", timeout=660
        )

    revoked_at = time.time()
    wrong = mint_agent_token("not-the-loqua-api-key-" + "x" * 16, env["AGENT_ID"], 3600)
    local_cluster.ensure_secrets(stack, {**env, "AGENT_JWT_TOKEN": wrong})
    try:
        restart_workers()
        room = f"{namespace}-auth"
        monitored.apply(ad_manifest(namespace, "auth", room, ttl=60))
        await until(
            lambda: (monitored.ad(namespace, "auth") or {}).get("status", {}).get("dispatchId"), "dispatch", 120
        )
        user = create_user(env, "Ana")
        learner = Learner(env, room, user_id=user["user_id"], sessionId=f"sess_{int(time.time() * 1000)}_auth")
        await learner.join()
        try:
            refused = "sum(loqua_tutor_auth_failures_total)"
            await until(
                lambda: any(float(r["value"][1]) > 0 for r in _prom(env, "/api/v1/query", query=refused)["result"]),
                "the worker's refused API calls in Prometheus",
                180,
                interval=2,
            )
        finally:
            await learner.leave()
        firing = _wait_pages(
            lambda: pager.first_page(_pages(monitored)[before:], name, "firing"),
            f"a firing {name} page",
            600,
        )
    finally:
        local_cluster.ensure_secrets(stack, env)
        restored_at = time.time()
        restart_workers()
    assert firing["labels"]["namespace"] == local_cluster.NAMESPACE
    resolved = _wait_pages(
        lambda: pager.first_page(_pages(monitored)[before:], name, "resolved"),
        f"a resolved {name} page",
        900,
    )
    fired = datetime.fromisoformat(firing["received"]).timestamp()
    cleared = datetime.fromisoformat(resolved["received"]).timestamp()
    print(
        f"\n{name}: JWT replaced -> page {fired - revoked_at:.0f} s later; JWT restored -> resolved page "
        f"{cleared - restored_at:.0f} s later"
    )


async def test_sessions_failing_page_completion_rate_then_resolve(monitored: Cluster, namespace: str) -> None:
    """The Loqua API refuses every user-token exchange (503, injected through its /admin/faults):
    sessions still run, degraded, but none can reach the learner's account, so each ends `failed`.
    Ten such sessions (waves of two, so the one worker pod at rest takes them and no scale-down
    races their last scrape) -> LoquaSessionCompletionRateLow pages; the API healthy again, the
    failures leave the rule's window (a chart value locally) and the page resolves."""
    from loqua_devstack.learner import Learner, create_user
    from loqua_tutor.contract import USER_TOKEN
    from tests.cluster.conftest import ad_manifest, until

    name = "LoquaSessionCompletionRateLow"
    env = monitored.env
    rule_for = _loaded_for(env, name)
    failed = "sum(loqua_tutor_sessions_failed_total)"

    def failed_now() -> float:
        return sum(float(r["value"][1]) for r in _prom(env, "/api/v1/query", query=failed)["result"])

    admin = httpx.Client(
        base_url=env["LOQUA_API_URL"], headers={"Authorization": f"Bearer {env['LOQUA_ADMIN_TOKEN']}"}, timeout=15
    )
    assert not [p for p in _pages(monitored) if p["alertname"] == name and p["status"] == "firing"], "already fires"
    before = len(_pages(monitored))
    waves, per_wave = 5, 2
    broke_at = time.time()
    admin.post("/admin/faults", json={"path_prefix": USER_TOKEN, "status": 503}).raise_for_status()
    try:
        for wave in range(waves):
            start = failed_now()
            users = [create_user(env, f"Wave {wave}.{i}") for i in range(per_wave)]
            stamp = int(time.time() * 1000)
            learners = []
            for i, user in enumerate(users):
                room = f"{namespace}-w{wave}-{i}"
                monitored.apply(ad_manifest(namespace, f"w{wave}-{i}", room, ttl=300))
                learners.append(Learner(env, room, user_id=user["user_id"], sessionId=f"sess_{stamp}_{wave}{i}"))
            await asyncio.gather(*(learner.join() for learner in learners))
            try:
                await until(
                    lambda ls=learners: all(
                        len(a := x.agents_in_room()) == 1 and a[0].attributes.get("loqua.status") == "active"
                        for x in ls
                    ),
                    f"wave {wave}: both learners in session with one agent",
                    180,
                )
            finally:
                await asyncio.gather(*(learner.leave() for learner in learners), return_exceptions=True)
            for i in range(per_wave):  # the dispatch deleted -> the job ends -> the session finalizes
                monitored.kubectl("-n", namespace, "delete", "agentdispatch", f"w{wave}-{i}", "--wait=false")
            await until(
                lambda s=start: failed_now() >= s + per_wave,
                f"wave {wave}: its {per_wave} failed sessions in Prometheus",
                180,
                interval=2,
            )
        firing = _wait_pages(
            lambda: pager.first_page(_pages(monitored)[before:], name, "firing"),
            f"a firing {name} page",
            rule_for + 300,
        )
    finally:
        admin.delete("/admin/faults").raise_for_status()
        healed_at = time.time()
        admin.close()
    received = datetime.fromisoformat(firing["received"]).timestamp()
    assert firing["labels"]["namespace"] == local_cluster.NAMESPACE
    # From the first evaluation at which the rule's condition held to the page: its `for`, plus an
    # evaluation interval and Alertmanager's group_wait (the condition is on scraped data already).
    query = next(r["query"] for g in _prom(env, "/api/v1/rules")["groups"] for r in g["rules"] if r["name"] == name)
    held = _prom(env, "/api/v1/query_range", query=query, start=broke_at, end=received, step="1s")["result"]
    held_at = min(float(t) for s in held for t, _ in s["values"])
    budget = rule_for + _seconds(monitoring.EVALUATION_INTERVAL) + 5 + 5
    assert rule_for <= received - held_at <= budget + _seconds(monitoring.EVALUATION_INTERVAL), (
        received - held_at,
        budget,
    )
    window = _seconds(monitoring.LOCAL_WINDOWS[name])
    resolved = _wait_pages(
        lambda: pager.first_page(_pages(monitored)[before:], name, "resolved"),
        f"a resolved {name} page",
        window + 300,
    )
    cleared = datetime.fromisoformat(resolved["received"]).timestamp()
    print(
        f"\n{name}: fault at {0:.0f} s, {waves * per_wave} failed sessions, condition held at "
        f"{held_at - broke_at:.0f} s, page at {received - broke_at:.0f} s ({received - held_at:.0f} s after the "
        f"condition held); API healed at {healed_at - broke_at:.0f} s, resolved page {cleared - healed_at:.0f} s later"
    )
