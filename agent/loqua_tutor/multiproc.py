"""Job metrics from child processes (``JOB_EXECUTOR=process``) in the main process's ``/metrics``.

Every job runs in its own short-lived process. prometheus_client's multiprocess mode has each of
them write its values to ``<dir>/<type>_<pid>.db``; the main process merges the files on every
scrape. Two chores keep that correct and cheap over a long-lived worker:

- gauges of processes that have exited are removed (``mark_process_dead``), so a crashed job
  does not leave a session counted as active forever;
- counter and histogram files of exited processes are folded into one archive file per type, so a
  worker that served 10,000 sessions merges a handful of files per scrape, not 20,000.

Both happen under the same lock as the scrape, so a scrape never sees a value twice or not at all
(a counter that dipped would look like a restart to Prometheus).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
ARCHIVE = "archive"
_ARCHIVED_TYPES = ("counter", "histogram")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_of(path: str) -> str:
    return os.path.basename(path)[: -len(".db")].rsplit("_", 1)[-1]


def _series_key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


class MultiprocStore:
    """The metrics directory shared with job processes; only ``names`` are exported from it."""

    def __init__(self, path: str, names: Iterable[str], zeros: CollectorRegistry | None = None) -> None:
        self.path = path
        self._names = frozenset(names)
        self._zeros = zeros
        self._lock = threading.Lock()

    @classmethod
    def prepare(cls, path: str, names: Iterable[str], zeros: CollectorRegistry | None = None) -> MultiprocStore:
        """Create (or empty) the directory and point child processes at it via the environment.

        Must run before the first job process (or the forkserver) starts: prometheus_client picks
        its value storage when it is imported in the child.
        """
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
        os.environ[ENV_VAR] = path
        return cls(path, names, zeros)

    def _files(self) -> list[str]:
        return glob.glob(os.path.join(self.path, "*.db"))

    def collect(self) -> list[Metric]:
        """The job series; ``zeros`` (an unexposed registry holding the same metrics at zero)
        fills in every series no job process has written yet, so dashboards and alerts see 0
        rather than no data on a fresh or idle worker. Counters and histograms are filled per
        label set (a job that counted one tool call leaves the other tools' series at 0); gauges
        per metric (their merged samples follow the multiprocess mode)."""
        with self._lock:
            merged = MultiProcessCollector.merge(self._files(), accumulate=True)
        found = [m for m in merged if m.name in self._names]
        if self._zeros is not None:
            by_name = {m.name: m for m in found}
            for zero in self._zeros.collect():
                if zero.name not in self._names:
                    continue
                metric = by_name.get(zero.name)
                if metric is None:
                    found.append(zero)
                elif metric.type in ("counter", "histogram"):
                    seen = {_series_key(s) for s in metric.samples}
                    # (a merged metric has no _created samples: none for the filled-in ones either)
                    metric.samples += [
                        s for s in zero.samples if _series_key(s) not in seen and not s.name.endswith("_created")
                    ]
        return found

    def compact(self, is_alive: Callable[[int], bool] = pid_alive) -> int:
        """Fold the files of exited processes into the archive; returns how many pids were folded."""
        with self._lock:
            dead: set[str] = set()
            for path in self._files():
                pid = _pid_of(path)
                if pid != ARCHIVE and pid.isdigit() and not is_alive(int(pid)):
                    dead.add(pid)
            if not dead:
                return 0
            for typ in _ARCHIVED_TYPES:
                archive = os.path.join(self.path, f"{typ}_{ARCHIVE}.db")
                sources = [os.path.join(self.path, f"{typ}_{pid}.db") for pid in dead]
                sources = [s for s in sources if os.path.exists(s)]
                if not sources:
                    continue
                inputs = sources + ([archive] if os.path.exists(archive) else [])
                # accumulate=False keeps histogram buckets per-bucket, as the files store them.
                merged = MultiProcessCollector.merge(inputs, accumulate=False)
                tmp = archive + ".tmp"
                if os.path.exists(tmp):
                    os.remove(tmp)
                store = MmapedDict(tmp)
                try:
                    for metric in merged:
                        if metric.name not in self._names:
                            continue
                        for sample in metric.samples:
                            labels = dict(sample.labels)
                            key = mmap_key(
                                metric.name,
                                sample.name,
                                list(labels),
                                list(labels.values()),
                                metric.documentation,
                            )
                            store.write_value(key, sample.value, 0.0)
                finally:
                    store.close()
                os.replace(tmp, archive)
                for source in sources:
                    os.remove(source)
            for pid in dead:
                mark_process_dead(int(pid), self.path)
                for leftover in glob.glob(os.path.join(self.path, f"*_{pid}.db")):
                    os.remove(leftover)  # other types (e.g. livekit's own series) are not exported
            return len(dead)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ExpositionCollector(Collector):
    """What ``/metrics`` serves: the main process's registry plus the job processes' files."""

    def __init__(self, registry: CollectorRegistry, store: MultiprocStore | None) -> None:
        self._registry = registry
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        if self._store is not None:
            yield from self._store.collect()


def exposition_registry(registry: CollectorRegistry, store: MultiprocStore | None) -> CollectorRegistry:
    out = CollectorRegistry(auto_describe=False)
    out.register(ExpositionCollector(registry, store))
    return out
