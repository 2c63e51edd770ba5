"""Monitoring on the local cluster (`make cluster MONITORING=1`): Prometheus, Alertmanager, a pager.

The chart is installed with ``monitoring.serviceMonitor.enabled`` and
``monitoring.prometheusRule.enabled`` (and the ``release`` label below), so its own ServiceMonitor
and PrometheusRule objects exist in the cluster; the CRDs are prometheus-operator's, taken from its
Go module. Prometheus is configured FROM those objects as they are stored in the API server:

- each ServiceMonitor selected by the release label becomes a scrape job with
  ``kubernetes_sd_configs`` (role endpoints) and the relabelling prometheus-operator generates for
  it (service label selector, port name, namespace/service/pod/container/endpoint labels,
  podTargetLabels, interval, scrapeTimeout);
- each PrometheusRule's ``spec`` is written as a rule file, byte for byte what the object holds.

prometheus-operator itself is not run (see /work/notes/issue-13.md: it builds here, wiring its
StatefulSets was not done in the time). Prometheus, Alertmanager and the pager are processes of the
stack on 127.0.0.1 (Prometheus reaches the pods on the node's bridge).
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

import yaml

from loqua_devstack import binaries

# The `release` label our Prometheus selects ServiceMonitors and PrometheusRules on (the chart's
# monitoring.release; kube-prometheus-stack's convention).
RELEASE_LABEL = "loqua-monitoring"
MONITORING_PARTS = ("pager", "alertmanager", "prometheus")
CRD_FILES = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")
# Prometheus evaluates the rules this often (the ServiceMonitor sets the scrape interval).
EVALUATION_INTERVAL = "10s"
SCRAPE_INTERVAL = "10s"
LOCAL_FOR = {
    "LoquaLiveKitUnreachable": "1m",
    "LoquaAgentAuthFailureRateHigh": "1m",
    "LoquaSessionCompletionRateLow": "1m",
}
# ... and a completion rate over 6 minutes instead of an hour: a fault's sessions page, and the page
# resolves once they are out of the window (at least 10 ended sessions in it, as in production).
LOCAL_WINDOWS = {"LoquaSessionCompletionRateLow": "6m"}


def _say(msg: str) -> None:
    print(f"[loqua-dev monitoring] {msg}", file=sys.stderr, flush=True)


def crd_paths() -> list[Path]:
    """prometheus-operator's CRDs for ServiceMonitor and PrometheusRule, from its Go module."""
    root = binaries.module_dir(
        "github.com/prometheus-operator/prometheus-operator", binaries.PROMETHEUS_OPERATOR_VERSION
    )
    return [root / "example" / "prometheus-operator-crd" / name for name in CRD_FILES]


def helm_args() -> tuple[str, ...]:
    """What `make cluster MONITORING=1` adds to the chart's install (values a user would set)."""
    return (
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        f"monitoring.release={RELEASE_LABEL}",
        # Alerts within seconds of their `for` on a local stack (the chart's default is 30s).
        "--set",
        f"monitoring.serviceMonitor.interval={SCRAPE_INTERVAL}",
        "--set",
        "monitoring.serviceMonitor.scrapeTimeout=5s",
        # Faults page within minutes on a local stack: shorter `for`s (chart values; the rules
        # themselves are the chart's), and an orphan sweep, which also probes LiveKit, every 15 s.
        *(
            a
            for alert, duration in LOCAL_FOR.items()
            for a in ("--set", f"monitoring.prometheusRule.for.{alert}={duration}")
        ),
        *(
            a
            for alert, window in LOCAL_WINDOWS.items()
            for a in ("--set", f"monitoring.prometheusRule.windows.{alert}={window}")
        ),
        "--set",
        "operator.cleanupIntervalMs=15000",
    )


def _sanitize(name: str) -> str:
    """Prometheus' label-name sanitising of Kubernetes label keys (as in __meta_kubernetes_*)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def scrape_configs(servicemonitor: dict, sd: dict) -> list[dict]:
    """The scrape jobs prometheus-operator generates for one ServiceMonitor (role endpoints)."""
    meta, spec = servicemonitor["metadata"], servicemonitor["spec"]
    namespaces = spec.get("namespaceSelector", {}).get("matchNames") or [meta["namespace"]]
    selector = spec.get("selector", {})
    jobs = []
    for i, ep in enumerate(spec.get("endpoints", [])):
        relabel: list[dict] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        for key, value in sorted(selector.get("matchLabels", {}).items()):
            k = _sanitize(key)
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": [
                        f"__meta_kubernetes_service_label_{k}",
                        f"__meta_kubernetes_service_labelpresent_{k}",
                    ],
                    "regex": f"({re.escape(value)});true",
                }
            )
        for expr in selector.get("matchExpressions", []):
            k = _sanitize(expr["key"])
            op = expr["operator"]
            if op in ("In", "NotIn"):
                relabel.append(
                    {
                        "action": "keep" if op == "In" else "drop",
                        "source_labels": [
                            f"__meta_kubernetes_service_label_{k}",
                            f"__meta_kubernetes_service_labelpresent_{k}",
                        ],
                        "regex": "(" + "|".join(re.escape(v) for v in expr["values"]) + ");true",
                    }
                )
            elif op in ("Exists", "DoesNotExist"):
                relabel.append(
                    {
                        "action": "keep" if op == "Exists" else "drop",
                        "source_labels": [f"__meta_kubernetes_service_labelpresent_{k}"],
                        "regex": "true",
                    }
                )
            else:
                raise ValueError(f"ServiceMonitor {meta['name']}: unknown matchExpressions operator {op!r}")
        if "port" in ep:
            relabel.append(
                {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": ep["port"]}
            )
        relabel += [
            {
                "source_labels": [
                    "__meta_kubernetes_endpoint_address_target_kind",
                    "__meta_kubernetes_endpoint_address_target_name",
                ],
                "separator": ";",
                "regex": "Pod;(.*)",
                "replacement": "${1}",
                "target_label": "pod",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        ]
        for label in spec.get("podTargetLabels", []):
            relabel.append(
                {
                    "source_labels": [f"__meta_kubernetes_pod_label_{_sanitize(label)}"],
                    "target_label": _sanitize(label),
                    "regex": "(.+)",
                    "replacement": "${1}",
                }
            )
        relabel += [
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
            {"target_label": "endpoint", "replacement": ep.get("port", str(ep.get("targetPort", "")))},
        ]
        job = {
            "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
            "honor_labels": bool(ep.get("honorLabels", False)),
            "metrics_path": ep.get("path", "/metrics"),
            "scheme": ep.get("scheme", "http"),
            "kubernetes_sd_configs": [{"role": "endpoints", "namespaces": {"names": namespaces}, **sd}],
            "relabel_configs": relabel,
        }
        if "interval" in ep:
            job["scrape_interval"] = ep["interval"]
        if "scrapeTimeout" in ep:
            job["scrape_timeout"] = ep["scrapeTimeout"]
        jobs.append(job)
    return jobs


def rule_file_name(prometheusrule: dict) -> str:
    meta = prometheusrule["metadata"]
    return f"{meta['namespace']}-{meta['name']}.yaml"


def rule_file_text(prometheusrule: dict) -> str:
    """A PrometheusRule's spec as a Prometheus rule file (what prometheus-operator mounts)."""
    return yaml.safe_dump(prometheusrule["spec"], sort_keys=False, allow_unicode=True)


def kubelet_job(address: str, port: int, tls: dict) -> dict:
    """The node's cAdvisor series (container memory and CPU), as kube-prometheus-stack's kubelet
    ServiceMonitor scrapes them; the kubelet's serving certificate is self-signed (like its
    ``insecureSkipVerify: true``), the client certificate is the stack's admin one."""
    return {
        "job_name": "kubelet-cadvisor",
        # As often as the ServiceMonitor's jobs: a panel's rate() over $__rate_interval (4 scrape
        # intervals) needs two samples of these series too.
        "scrape_interval": SCRAPE_INTERVAL,
        "scheme": "https",
        "metrics_path": "/metrics/cadvisor",
        "honor_labels": True,
        "honor_timestamps": True,
        "tls_config": {"cert_file": tls["cert_file"], "key_file": tls["key_file"], "insecure_skip_verify": True},
        "static_configs": [{"targets": [f"{address}:{port}"], "labels": {"job": "kubelet"}}],
    }


def prometheus_config(
    servicemonitors: list[dict], rule_files: list[Path], sd: dict, alertmanager: str, extra_jobs: list[dict] = ()
) -> dict:
    return {
        "global": {"evaluation_interval": EVALUATION_INTERVAL, "scrape_interval": "30s"},
        "rule_files": [str(p) for p in rule_files],
        "alerting": {"alertmanagers": [{"api_version": "v2", "static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [job for sm in servicemonitors for job in scrape_configs(sm, sd)] + list(extra_jobs),
    }


def alertmanager_config(pager_url: str) -> dict:
    """Every alert to the pager, resolved ones too; short waits (a local stack, not a fleet)."""
    return {
        "route": {
            "receiver": "pager",
            "group_by": ["alertname", "namespace"],
            "group_wait": "5s",
            "group_interval": "10s",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "pager", "webhook_configs": [{"url": pager_url, "send_resolved": True}]}],
    }


def selected(stack, kind: str) -> list[dict]:  # type: ignore[no-untyped-def]
    out = stack.kubectl("get", kind, "-A", "-l", f"release={RELEASE_LABEL}", "-o", "json").stdout
    return json.loads(out)["items"]


def write_configs(stack) -> dict:  # type: ignore[no-untyped-def]
    """Read the selected ServiceMonitors and PrometheusRules and write Prometheus' and
    Alertmanager's configuration under .devstack/monitoring/."""
    state = stack.load()
    ports = state["ports"]
    pki = stack._pki()
    root = stack.root / "monitoring"
    rules_dir = root / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    for old in rules_dir.glob("*.yaml"):
        old.unlink()
    sms = selected(stack, "servicemonitors.monitoring.coreos.com")
    prs = selected(stack, "prometheusrules.monitoring.coreos.com")
    if not sms or not prs:
        raise RuntimeError(
            f"no ServiceMonitor/PrometheusRule labelled release={RELEASE_LABEL} in the cluster "
            f"(found {len(sms)}/{len(prs)}): was the chart installed with `{' '.join(helm_args())}`?"
        )
    rule_files = []
    for pr in prs:
        path = rules_dir / rule_file_name(pr)
        path.write_text(rule_file_text(pr))
        rule_files.append(path)
    sd = {
        "api_server": f"https://127.0.0.1:{ports['apiserver']}",
        "tls_config": {"ca_file": str(pki.ca_cert), "cert_file": str(pki.admin_cert), "key_file": str(pki.admin_key)},
    }
    nodecfg = state.get("node") or {}
    extra = []
    if nodecfg.get("enabled"):
        extra.append(kubelet_job(nodecfg["address"], nodecfg["ports"]["kubelet"], sd["tls_config"]))
    config = prometheus_config(sms, rule_files, sd, f"127.0.0.1:{ports['alertmanager']}", extra)
    (root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "alertmanager.yml").write_text(
        yaml.safe_dump(alertmanager_config(f"http://127.0.0.1:{ports['pager']}/alerts"), sort_keys=False)
    )
    _say(f"{len(sms)} ServiceMonitor(s), {len(prs)} PrometheusRule(s) -> {root}")
    return {"servicemonitors": len(sms), "prometheusrules": len(prs)}


def init_ports(state: dict) -> None:
    from loqua_devstack import processes

    for key in MONITORING_PARTS:
        state["ports"].setdefault(key, processes.free_port())


def enabled(state: dict) -> bool:
    return bool(state.get("monitoring", {}).get("enabled"))


def part_specs(root: Path, state: dict) -> dict[str, tuple[list[str], dict[str, str]]]:
    p = state["ports"]
    mon = root / "monitoring"
    return {
        "pager": (
            [sys.executable, "-m", "loqua_devstack.pager", f"--port={p['pager']}", f"--record={pager_record(root)}"],
            {},
        ),
        "alertmanager": (
            [
                str(binaries.path_of("alertmanager")),
                f"--config.file={mon / 'alertmanager.yml'}",
                f"--storage.path={mon / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{p['alertmanager']}",
                "--cluster.listen-address=",  # no gossip port (it would listen on every address)
                "--log.level=warn",
            ],
            {},
        ),
        "prometheus": (
            [
                str(binaries.path_of("prometheus")),
                f"--config.file={mon / 'prometheus.yml'}",
                f"--storage.tsdb.path={mon / 'prometheus-data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{p['prometheus']}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            {},
        ),
    }


def probes(state: dict) -> dict[str, str]:
    p = state["ports"]
    return {
        "pager": f"http://127.0.0.1:{p['pager']}/healthz",
        "alertmanager": f"http://127.0.0.1:{p['alertmanager']}/-/ready",
        "prometheus": f"http://127.0.0.1:{p['prometheus']}/-/ready",
    }


def env(state: dict) -> dict[str, str]:
    if not enabled(state):
        return {}
    p = state["ports"]
    return {
        "PROMETHEUS_URL": f"http://127.0.0.1:{p['prometheus']}",
        "ALERTMANAGER_URL": f"http://127.0.0.1:{p['alertmanager']}",
        "PAGER_URL": f"http://127.0.0.1:{p['pager']}",
    }


def pager_record(root: Path) -> Path:
    return root / "monitoring" / "pages.jsonl"


def up(stack) -> None:  # type: ignore[no-untyped-def]
    """After the chart is installed with helm_args(): configure and start the three parts."""
    binaries.ensure_all(list(binaries.MONITORING_BINARIES[:2]))
    state = stack.load()
    init_ports(state)
    state.setdefault("monitoring", {})["enabled"] = True
    stack.save(state)
    write_configs(stack)
    for part in MONITORING_PARTS:
        stack.start_part(part, stack.load())
    # Already running (a second `make cluster`): they re-read the configuration just written.
    for url in (env(stack.load())["ALERTMANAGER_URL"], env(stack.load())["PROMETHEUS_URL"]):
        urllib.request.urlopen(urllib.request.Request(f"{url}/-/reload", method="POST"), timeout=30).close()
    stack.write_env()


def ensure_crds(stack) -> None:  # type: ignore[no-untyped-def]
    """prometheus-operator's ServiceMonitor and PrometheusRule CRDs (server-side: they are large)."""
    for path in crd_paths():
        stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for name in ("servicemonitors", "prometheusrules"):
        stack.kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com", "--timeout=60s")
