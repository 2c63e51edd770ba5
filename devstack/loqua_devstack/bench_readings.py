"""What the bench reads, parsed: Prometheus text (the operator's and the API server's ``/metrics``) and
a process's ``/proc/PID/status`` and ``/proc/PID/stat``. Pure functions of the text, plus thin readers.

The API server counts every request it served in ``apiserver_request_total`` by verb, group, resource
and subresource, whoever sent it; two readings around a burst give the writes the burst cost, as the
server saw them (not as a client believes it sent them).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Verbs as apiserver_request_total reports them (PUT is an update, APPLY a server-side apply patch).
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
REQUESTS = "apiserver_request_total"

# (resource, subresource, verb): e.g. ("agentdispatches", "status", "PATCH")
WriteKey = tuple[str, str, str]


def samples(text: str, prefix: str = "") -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition whose name starts with
    ``prefix``; other lines are dropped before parsing (the API server's page is megabytes)."""
    if prefix:
        text = "\n".join(line for line in text.splitlines() if line.startswith(prefix)) + "\n"
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix)
    ]


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``; 0 when there are none."""
    return sum(v for n, lab, v in samples(text, name) if n == name and all(lab.get(k) == x for k, x in labels.items()))


def by_label(text: str, name: str, label: str) -> dict[str, float]:
    """Samples called ``name`` summed by one label: ``{label value: total}``."""
    out: dict[str, float] = {}
    for n, lab, v in samples(text, name):
        if n == name:
            out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
    return out


def api_writes(text: str, resources: tuple[str, ...] = ("agentdispatches", "events")) -> Counter[WriteKey]:
    """Write requests the API server served, from its ``/metrics``, by (resource, subresource, verb),
    for ``resources`` only; every response code counts (a conflict costs the server a write too)."""
    out: Counter[WriteKey] = Counter()
    for name, lab, v in samples(text, REQUESTS):
        if name == REQUESTS and lab.get("resource") in resources and lab.get("verb") in WRITE_VERBS:
            out[(lab["resource"], lab.get("subresource", ""), lab["verb"])] += int(v)
    return out


def delta(after: Counter[WriteKey], before: Counter[WriteKey]) -> Counter[WriteKey]:
    """What happened between two readings (keys that did not move are left out)."""
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)})


def total(writes: Counter[WriteKey], resource: str) -> int:
    return sum(v for (res, _sub, _verb), v in writes.items() if res == resource)


def describe(writes: Counter[WriteKey], per: float = 1.0) -> str:
    """``PATCH agentdispatches/status 1.00, POST events 0.50`` (largest first), each divided by ``per``."""
    parts = []
    for (res, sub, verb), v in sorted(writes.items(), key=lambda kv: (-kv[1], kv[0])):
        parts.append(f"{verb} {res}{'/' + sub if sub else ''} {v / per:.2f}")
    return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Memory:
    rss_mib: float  # VmRSS: resident now
    hwm_mib: float  # VmHWM: the peak resident size of the process's life


def memory(status_text: str) -> Memory:
    """VmRSS and VmHWM of a ``/proc/PID/status`` text, in MiB (the kernel writes kB)."""
    fields: dict[str, float] = {}
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            number, unit = rest.split()
            if unit != "kB":
                raise ValueError(f"{key} in unexpected unit {unit!r} (expected kB)")
            fields[key] = int(number) / 1024
    missing = {"VmRSS", "VmHWM"} - fields.keys()
    if missing:
        raise ValueError(f"/proc status without {', '.join(sorted(missing))} (a kernel thread or a zombie?)")
    return Memory(fields["VmRSS"], fields["VmHWM"])


def cpu_ticks(stat_text: str) -> int:
    """utime + stime of a ``/proc/PID/stat`` text, in clock ticks. The command name (field 2) may hold
    spaces and parentheses, so fields are counted after its last ``)``."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted from 1


def read_memory(pid: int | None) -> Memory:
    return memory(Path(f"/proc/{pid}/status").read_text())


def cpu_seconds(pid: int | None) -> float:
    return cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / os.sysconf("SC_CLK_TCK")
