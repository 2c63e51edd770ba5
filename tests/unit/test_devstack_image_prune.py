"""What `make image` prunes after a build: images and OCI archives only earlier builds use (vfs
storage copies every layer in full: ~1.4 GB per rebuild once filled the disk)."""

from __future__ import annotations

import json
from pathlib import Path

from loqua_devstack import image
from loqua_devstack.image import BASE_IMAGE, IMAGE_REPOSITORY, SANDBOX_IMAGE, stale_files, superseded_images

OLD, NEW = "a" * 64, "b" * 64
BASE, PAUSE, OLD_BASE, OTHER = "c" * 64, "d" * 64, "e" * 64, "f" * 64


def _images() -> list[dict]:
    """Entries shaped like `buildah images --json` output."""
    return [
        {"id": OLD, "names": [f"{IMAGE_REPOSITORY}:{OLD[:12]}"]},
        {"id": NEW, "names": [f"{IMAGE_REPOSITORY}:dev", f"{IMAGE_REPOSITORY}:{NEW[:12]}"]},
        {"id": BASE, "names": [BASE_IMAGE]},
        {"id": PAUSE, "names": [SANDBOX_IMAGE]},
        {"id": OLD_BASE, "names": ["localhost/loqua-python-base:bookworm-000000000000"]},
        {"id": OTHER, "names": ["docker.io/library/someone-elses:1"]},
        {"id": "9" * 64, "names": None},  # an untagged layer: `rmi --prune`'s business
    ]


def test_only_images_no_current_name_uses_are_superseded() -> None:
    keep = {f"{IMAGE_REPOSITORY}:{NEW[:12]}", f"{IMAGE_REPOSITORY}:dev", BASE_IMAGE, SANDBOX_IMAGE}
    assert superseded_images(_images(), keep) == [OLD, OLD_BASE]


def test_an_image_that_also_carries_a_kept_name_stays() -> None:
    # After an unchanged rebuild :dev still names the old id: it is the current one.
    entries = [{"id": OLD, "names": [f"{IMAGE_REPOSITORY}:dev", f"{IMAGE_REPOSITORY}:{OLD[:12]}"]}]
    assert superseded_images(entries, {f"{IMAGE_REPOSITORY}:dev"}) == []


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


def test_prune_removes_the_superseded_and_their_archives(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The I/O around the decisions: `buildah rmi` per superseded id, `rmi --prune`, then the
    archives of what is gone (buildah itself stands in: this is the unit of the sequence)."""
    monkeypatch.setenv("LOQUA_CACHE_DIR", str(tmp_path))
    store = {e["id"]: e for e in _images()}
    calls: list[list[str]] = []

    def fake_run(cmd, capture_output=True, text=True):  # type: ignore[no-untyped-def]
        args = cmd[cmd.index("vfs") + 1 :]
        calls.append(args)
        if args[:1] == ["rmi"] and args[1] != "--prune":
            store.pop(args[1])
        return type("R", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(image.subprocess, "run", fake_run)
    monkeypatch.setattr(image, "_run", lambda cmd, *a, **k: json.dumps(list(store.values())))
    (image.images_dir() / f"loqua-agents_{OLD[:12]}-{OLD[:12]}.oci.tar").write_bytes(b"x")
    (image.images_dir() / f"loqua-agents_{NEW[:12]}-{NEW[:12]}.oci.tar").write_bytes(b"x")
    removed = image.prune(f"{IMAGE_REPOSITORY}:{NEW[:12]}")
    assert calls == [["rmi", OLD], ["rmi", OLD_BASE], ["rmi", "--prune"]]
    assert removed == [OLD[:12], OLD_BASE[:12], f"loqua-agents_{OLD[:12]}-{OLD[:12]}.oci.tar"]
    assert [p.name for p in image.images_dir().glob("*.oci.tar")] == [f"loqua-agents_{NEW[:12]}-{NEW[:12]}.oci.tar"]
