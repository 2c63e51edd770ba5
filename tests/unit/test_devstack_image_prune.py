"""What `make image` prunes after a build: images and OCI archives only earlier builds use (vfs
storage copies every layer in full: ~1.4 GB per rebuild once filled the disk)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from loqua_devstack import image
from loqua_devstack.image import (
    BASE_IMAGE,
    IMAGE_REPOSITORY,
    KEEP_RECENT_SECONDS,
    SANDBOX_IMAGE,
    stale_files,
    superseded_images,
)

OLD, NEW = "a" * 64, "b" * 64
BASE, PAUSE, OLD_BASE, OTHER = "c" * 64, "d" * 64, "e" * 64, "f" * 64
NOW = 1_800_000_000.0
LONG_AGO = NOW - KEEP_RECENT_SECONDS - 1


def _images() -> list[dict]:
    """Entries shaped like `buildah images --json` output."""
    return [
        {"id": OLD, "names": [f"{IMAGE_REPOSITORY}:{OLD[:12]}"], "created": LONG_AGO},
        {"id": NEW, "names": [f"{IMAGE_REPOSITORY}:dev", f"{IMAGE_REPOSITORY}:{NEW[:12]}"], "created": NOW},
        {"id": BASE, "names": [BASE_IMAGE], "created": LONG_AGO},
        {"id": PAUSE, "names": [SANDBOX_IMAGE], "created": LONG_AGO},
        {"id": OLD_BASE, "names": ["localhost/loqua-python-base:bookworm-000000000000"], "created": LONG_AGO},
        {"id": OTHER, "names": ["docker.io/library/someone-elses:1"], "created": LONG_AGO},
        {"id": "9" * 64, "names": None, "created": LONG_AGO},  # an untagged layer: `rmi --prune`'s business
        # Another checkout's build of a minute ago: it may not have reached its node yet.
        {"id": "8" * 64, "names": [f"{IMAGE_REPOSITORY}:{'8' * 12}"], "created": NOW - 60},
    ]


def test_only_images_no_current_name_uses_are_superseded() -> None:
    keep = {f"{IMAGE_REPOSITORY}:{NEW[:12]}", f"{IMAGE_REPOSITORY}:dev", BASE_IMAGE, SANDBOX_IMAGE}
    assert superseded_images(_images(), keep, NOW) == [OLD, OLD_BASE]


def test_an_image_that_also_carries_a_kept_name_stays() -> None:
    # After an unchanged rebuild :dev still names the old id: it is the current one.
    entries = [{"id": OLD, "names": [f"{IMAGE_REPOSITORY}:dev", f"{IMAGE_REPOSITORY}:{OLD[:12]}"], "created": 0}]
    assert superseded_images(entries, {f"{IMAGE_REPOSITORY}:dev"}, NOW) == []


def test_archives_of_gone_images_and_rootfs_of_another_recipe_are_stale(tmp_path: Path) -> None:
    key = BASE_IMAGE.rsplit("-", 1)[1]
    names = [
        f"loqua-agents_{OLD[:12]}-{OLD[:12]}.oci.tar",  # image removed
        f"loqua-agents_{NEW[:12]}-{NEW[:12]}.oci.tar",
        f"loqua-pause_{key}-{PAUSE[:12]}.oci.tar",
        f"loqua-agents_{NEW[:12]}-{OLD[:12]}.partial",  # a push under way: never touched
        f"rootfs-bookworm-{key}.tar",
        "rootfs-bookworm-000000000000.tar",  # another base recipe
        "last-build.json",
        "build.lock",
    ]
    paths = [tmp_path / n for n in names]
    stale = stale_files(paths, {NEW, f"sha256:{PAUSE}", BASE})
    assert [p.name for p in stale] == [names[0], names[5]]


@pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah comes with `make binaries` (Debian's package)")
def test_prune_on_a_real_buildah_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """buildah itself, on a storage of its own: an old build of ours goes with its archive; the
    current one, another checkout's recent one and someone else's image stay."""
    monkeypatch.setenv("LOQUA_CACHE_DIR", str(tmp_path))

    def commit(name: str, age: float) -> str:
        container = image._run(image.buildah_cmd("from", "scratch"))
        image._run(image.buildah_cmd("config", "--label", f"name={name}", container))
        stamp = str(int(time.time() - age))
        image._run(image.buildah_cmd("commit", "--rm", "--timestamp", stamp, container, name))
        ident = image.image_id(name)
        assert ident
        (image.images_dir() / f"{name.rsplit('/', 1)[1].replace(':', '_')}-{ident[:12]}.oci.tar").write_bytes(b"x")
        return ident[:12]

    try:
        old = commit(f"{IMAGE_REPOSITORY}:old", 2 * KEEP_RECENT_SECONDS)
        recent = commit(f"{IMAGE_REPOSITORY}:recent", 60)
        current = commit(f"{IMAGE_REPOSITORY}:current", 0)
        build_stage = commit(image.BUILD_STAGE, 2 * KEEP_RECENT_SECONDS)
        other = commit("localhost/someone-else:1", 2 * KEEP_RECENT_SECONDS)
        removed = image.prune(f"{IMAGE_REPOSITORY}:current")
        assert old in removed and f"loqua-agents_old-{old}.oci.tar" in removed
        assert image.image_id(f"{IMAGE_REPOSITORY}:old") is None
        kept = (
            f"{IMAGE_REPOSITORY}:recent",
            f"{IMAGE_REPOSITORY}:current",
            image.BUILD_STAGE,
            "localhost/someone-else:1",
        )
        for name in kept:
            assert image.image_id(name), name
        archives = sorted(p.name for p in image.images_dir().glob("*.oci.tar"))
        assert archives == sorted(
            [
                f"loqua-agents_build-stage-{build_stage}.oci.tar",
                f"loqua-agents_current-{current}.oci.tar",
                f"loqua-agents_recent-{recent}.oci.tar",
                f"someone-else_1-{other}.oci.tar",
            ]
        )
    finally:
        subprocess.run(image.buildah_cmd("rmi", "--all", "--force"), capture_output=True)
