"""Build the learner page (web/: TypeScript on livekit-client) once per source version, cached
outside the repository like the Go binaries: ``npm ci`` from the pinned lockfile, ``tsc`` type
check, an esbuild bundle. The reference Loqua API serves the result under ``/learn/``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from loqua_devstack.binaries import BuildError, _run, cache_dir
from loqua_devstack.processes import exclusive_lock

SOURCE = Path(__file__).resolve().parents[2] / "web"
INPUTS = ("package.json", "package-lock.json", "tsconfig.json", "index.html")


def _log(msg: str) -> None:
    print(f"[loqua-dev build] {msg}", file=sys.stderr, flush=True)


def _source_files(source: Path) -> list[Path]:
    files = [source / name for name in INPUTS]
    files += sorted(p for p in (source / "src").rglob("*") if p.is_file())
    return files


def digest(source: Path = SOURCE) -> str:
    """What the build depends on: every input file's path and bytes."""
    h = hashlib.sha256()
    for path in _source_files(source):
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def built_dir(source: Path = SOURCE) -> Path:
    return cache_dir() / "web" / f"learner-{digest(source)}"


def is_built(source: Path = SOURCE) -> bool:
    out = built_dir(source)
    return (out / "index.html").is_file() and (out / "assets" / "learner.js").is_file()


def _lock() -> contextlib.AbstractContextManager[None]:
    return exclusive_lock(
        cache_dir() / "web" / "build.lock", lambda: _log("another build of the learner page is running; waiting for it")
    )


def ensure_built(source: Path = SOURCE) -> Path:
    """The built page's directory (index.html, assets/learner.js), building it when missing."""
    if is_built(source):
        return built_dir(source)
    with _lock():
        out = built_dir(source)
        if is_built(source):
            return out
        npm = shutil.which("npm")
        if not npm or not shutil.which("node"):
            raise BuildError("Node.js and npm are needed to build the learner page (web/): install Node.js >= 20")
        work = cache_dir() / "web" / f"work-{out.name}"
        log_file = cache_dir() / "build-logs" / f"{out.name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")
        if work.exists():
            shutil.rmtree(work)
        for path in _source_files(source):
            target = work / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        _log(f"building the learner page (npm ci, tsc, esbuild; first time about a minute; log: {log_file})")
        started = time.monotonic()
        env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
        _run([npm, "ci", "--no-audit", "--no-fund"], work, log_file, env)
        _run([npm, "run", "-s", "typecheck"], work, log_file, env)
        _run([npm, "run", "-s", "bundle"], work, log_file, env)
        shutil.copy2(work / "index.html", work / "dist" / "index.html")
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.move(str(work / "dist"), tmp)
        tmp.replace(out)
        shutil.rmtree(work, ignore_errors=True)
        _log(f"built the learner page in {time.monotonic() - started:.0f} s -> {out}")
        return out
