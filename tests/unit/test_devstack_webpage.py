"""The learner page is built once per source version: the cache key covers exactly the build's inputs
(web/'s manifest, lockfile, tsconfig, index.html and src/), so a built page is reused until one of
them changes. The real build (npm ci from the lockfile, tsc, esbuild) runs in `loqua-dev build`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loqua_devstack import webpage


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "web"
    shutil.copytree(webpage.SOURCE, src, ignore=shutil.ignore_patterns("node_modules", "dist"))
    return src


def test_the_lockfile_pins_every_package_with_its_integrity() -> None:
    lock = json.loads((webpage.SOURCE / "package-lock.json").read_text())
    manifest = json.loads((webpage.SOURCE / "package.json").read_text())
    deps = {**manifest["dependencies"], **manifest["devDependencies"]}
    assert all(v[0].isdigit() for v in deps.values()), deps  # exact versions, no ranges
    packages = {k: v for k, v in lock["packages"].items() if k}
    assert packages and all(p.get("integrity", "").startswith("sha512-") for p in packages.values())
    assert lock["packages"]["node_modules/livekit-client"]["version"] == manifest["dependencies"]["livekit-client"]


def test_digest_follows_the_inputs_only(source: Path) -> None:
    first = webpage.digest(source)
    assert webpage.digest(source) == first
    (source / "node_modules").mkdir()
    (source / "node_modules" / "x.js").write_text("ignored")
    (source / "README.txt").write_text("not an input")
    assert webpage.digest(source) == first
    main = source / "src" / "main.ts"
    main.write_text(main.read_text() + "\n// changed\n")
    assert webpage.digest(source) != first


def test_a_built_page_is_found_in_the_cache_and_not_rebuilt(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOQUA_CACHE_DIR", str(tmp_path / "cache"))
    out = webpage.built_dir(source)
    assert out.parent == tmp_path / "cache" / "web" and not webpage.is_built(source)
    (out / "assets").mkdir(parents=True)
    (out / "index.html").write_text("<html></html>")
    (out / "assets" / "learner.js").write_text("//")
    monkeypatch.setattr(webpage.shutil, "which", lambda name: pytest.fail("a cached page must not run npm"))
    assert webpage.ensure_built(source) == out
