"""Build the project's image from deploy/Dockerfile with buildah, without Docker or a registry.

deploy/Dockerfile is the one recipe (a user with Docker builds it unchanged). Its base,
``PYTHON_IMAGE``, cannot be pulled here, so a stand-in is made from Debian's packages (debootstrap
of a minimal bookworm with python3, the same Debian release as python:3.11-slim-bookworm) and
passed as the build argument. buildah keeps its storage (vfs) under the cache directory, so the
base is made once and a second build reuses every layer whose inputs did not change.

The node's containerd gets images as OCI archives (``ctr images import``); the sandbox ("pause")
image of the node is built here the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loqua_devstack import debian
from loqua_devstack.binaries import cache_dir
from loqua_devstack.processes import exclusive_lock

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IMAGE_REPOSITORY = "localhost/loqua-agents"
BASE_SUITE = "bookworm"
# python-is-python3: the Dockerfile (like python:*-slim) calls `python`.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
_BASE_KEY = hashlib.sha256(f"{BASE_SUITE} {' '.join(BASE_PACKAGES)} v1".encode()).hexdigest()[:12]
BASE_IMAGE = f"localhost/loqua-python-base:{BASE_SUITE}-{_BASE_KEY}"
SANDBOX_IMAGE = f"localhost/loqua-pause:{_BASE_KEY}"
# The Dockerfile's build stage of the last build: its layers (pip's above all) are the next build's cache.
BUILD_STAGE = f"{IMAGE_REPOSITORY}:build-stage"


class ImageError(RuntimeError):
    """An image could not be built; the message says where to look."""


def _say(msg: str) -> None:
    print(f"[loqua-dev image] {msg}", file=sys.stderr, flush=True)


def images_dir() -> Path:
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def buildah_cmd(*args: str) -> list[str]:
    """buildah with the project's own storage (vfs: works on any filesystem, needs no fuse)."""
    storage = cache_dir() / "buildah"
    return [
        "buildah",
        "--root",
        str(storage / "storage"),
        "--runroot",
        str(storage / "run"),
        "--storage-driver",
        "vfs",
        *args,
    ]


def _run(cmd: list[str], log: Path | None = None, what: str = "") -> str:
    """Run ``cmd``; output goes to ``log`` (with progress notes) or is returned."""
    if log is None:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()[-1500:]}")
        return result.stdout.strip()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = last = time.monotonic()
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                _say(f"  ... {what or cmd[0]} still running ({int(last - started)} s; log {log})")
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ImageError(f"`{' '.join(cmd[:6])} ...` failed (exit {proc.returncode}); full log: {log}\n{tail}")
    return ""


def image_id(name: str) -> str | None:
    out = subprocess.run(
        buildah_cmd("images", "--noheading", "--no-trunc", "--format", "{{.ID}}", name),
        capture_output=True,
        text=True,
    )
    ids = out.stdout.split()
    return ids[0].removeprefix("sha256:") if out.returncode == 0 and ids else None


def _apt_mirror() -> str | None:
    """The Debian mirror this machine's apt uses (debootstrap's own default otherwise)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?\s", text, re.M):
            return match.group(1)
    return None


def _registry_mounts() -> list[str]:
    """Mount this machine's pip configuration and CA certificates (read-only) into RUN steps, so
    pip inside the build reaches the package registry the way pip on the machine does. Nothing
    of them ends up in a layer: the image keeps Debian's own certificates."""
    mounts = []
    for path in (Path("/etc/pip.conf"), Path("/etc/ssl/certs")):
        if path.exists():
            mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


def ensure_base(log: Path) -> str:
    """The stand-in for python:3.11-slim-bookworm, made once from Debian's packages."""
    if image_id(BASE_IMAGE):
        return BASE_IMAGE
    debian.ensure(["image"], log_dir=cache_dir() / "build-logs")
    rootfs_tar = images_dir() / f"rootfs-{BASE_SUITE}-{_BASE_KEY}.tar"
    if not rootfs_tar.exists():
        _say(
            f"making the base image from Debian's packages (debootstrap {BASE_SUITE} minbase + "
            f"{', '.join(BASE_PACKAGES)}; first time only, about 3 min; log {log})"
        )
        with tempfile.TemporaryDirectory(prefix="loqua-rootfs-", dir=images_dir()) as tmp:
            rootfs = Path(tmp) / "rootfs"
            cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE, str(rootfs)]
            mirror = _apt_mirror()
            _run([*cmd, mirror] if mirror else cmd, log, "debootstrap")
            # What a slim image leaves out: package caches and lists, docs, man pages.
            for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
                (rootfs / junk).mkdir(parents=True, exist_ok=True)
            partial = rootfs_tar.with_suffix(".partial")
            _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], log, "tar")
            partial.replace(rootfs_tar)
    container = _run(buildah_cmd("from", "scratch"))
    try:
        _run(buildah_cmd("add", container, str(rootfs_tar), "/"), log, "buildah add")
        _run(
            buildah_cmd(
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "python3",
                "--label",
                f"org.opencontainers.image.description=Debian {BASE_SUITE} minbase + {' '.join(BASE_PACKAGES)}",
                container,
            )
        )
        _run(buildah_cmd("commit", "--rm", container, BASE_IMAGE), log, "buildah commit")
    except ImageError:
        subprocess.run(buildah_cmd("rm", container), capture_output=True)
        raise
    _say(f"base image {BASE_IMAGE} ready")
    return BASE_IMAGE


def ensure_sandbox_image(log: Path) -> str:
    """The node's pod sandbox image: the base with an entry point that sleeps until killed."""
    if image_id(SANDBOX_IMAGE):
        return SANDBOX_IMAGE
    base = ensure_base(log)
    container = _run(buildah_cmd("from", base))
    _run(buildah_cmd("config", "--entrypoint", '["sleep", "infinity"]', "--cmd", "", "--user", "65535", container))
    _run(buildah_cmd("commit", "--rm", container, SANDBOX_IMAGE), log, "buildah commit")
    return SANDBOX_IMAGE


@dataclass(frozen=True)
class BuiltImage:
    name: str  # repository:tag, the tag being the image's own id (a rebuild with changes rolls pods)
    image_id: str
    size: str  # as buildah reports it (uncompressed layers), e.g. "699 MB"
    seconds: float


# The build context deploy/Dockerfile uses (what .dockerignore lets through).
CONTEXT_FILES = ("pyproject.toml", "constraints.txt", "README.md")
CONTEXT_DIRS = ("common", "operator", "agent")


def context_digest(base: str, extras: str) -> str:
    """A digest of everything the build reads: when it is unchanged, so is the image."""
    digest = hashlib.sha256(f"{base}\0{image_id(base)}\0{extras}\0".encode())
    paths = [DOCKERFILE, ROOT / ".dockerignore", *(ROOT / f for f in CONTEXT_FILES)]
    for d in CONTEXT_DIRS:
        paths += sorted(
            f
            for f in (ROOT / d).rglob("*")
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc" and ".egg-info" not in str(f)
        )
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build(log: Path | None = None, extras: str = "") -> BuiltImage:
    """Build deploy/Dockerfile on the local base; layers are reused from earlier builds, and an
    unchanged build context reuses the last image without running buildah at all. Then prune what
    earlier builds left. One build at a time per cache (another checkout's prune must not remove
    the image this one just built)."""
    lock = images_dir() / "build.lock"
    with exclusive_lock(lock, lambda: _say("another image build is running for this cache; waiting for it")):
        built = _build(log, extras)
        prune(built.name)
    return built


def _build(log: Path | None, extras: str) -> BuiltImage:
    log = log or cache_dir() / "build-logs" / "image.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    debian.ensure(["image"], log_dir=cache_dir() / "build-logs")
    base = ensure_base(log)
    started = time.monotonic()
    digest = context_digest(base, extras)
    last_file = images_dir() / "last-build.json"
    last = json.loads(last_file.read_text()) if last_file.exists() else {}
    if last.get("digest") == digest and image_id(last.get("name", "")):
        seconds = time.monotonic() - started
        _say(f"{last['name']}: sources unchanged since its build, reused ({image_size(last['name'])})")
        return BuiltImage(last["name"], image_id(last["name"]) or "", image_size(last["name"]), seconds)
    _say(f"building {DOCKERFILE.relative_to(ROOT)} with buildah on {base} (first time about 5 min; log {log})")
    _run(_build_cmd(base, extras, f"{IMAGE_REPOSITORY}:dev"), log, "buildah build")
    # The build stage's last layer is in no final image: untagged, the prune below would remove it
    # with its parents (the pip layer), and a code change would then re-run pip. Its tag keeps
    # them; every layer is cached by now, so this only names it.
    _run(_build_cmd(base, extras, BUILD_STAGE, "--target", "build"), log, "buildah build --target build")
    ident = image_id(f"{IMAGE_REPOSITORY}:dev")
    if not ident:
        raise ImageError(f"buildah build finished but {IMAGE_REPOSITORY}:dev is not in its storage; see {log}")
    name = f"{IMAGE_REPOSITORY}:{ident[:12]}"
    _run(buildah_cmd("tag", f"{IMAGE_REPOSITORY}:dev", name))
    seconds = time.monotonic() - started
    size = image_size(name)
    last_file.write_text(json.dumps({"digest": digest, "name": name}))
    _say(f"built {name} ({size}) in {seconds:.0f} s")
    return BuiltImage(name, ident, size, seconds)


def _build_cmd(base: str, extras: str, tag: str, *more: str) -> list[str]:
    return buildah_cmd(
        "build",
        "--layers",
        # RUN steps reach only the package registry (pip), through the machine's own network.
        "--network",
        "host",
        "--isolation",
        "chroot",
        *_registry_mounts(),
        "-f",
        str(DOCKERFILE),
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"EXTRAS={extras}",
        *more,
        "-t",
        tag,
        str(ROOT),
    )


# Repositories this module builds into; any other image in the storage is left alone.
MANAGED_REPOSITORIES = (IMAGE_REPOSITORY, BASE_IMAGE.rsplit(":", 1)[0], SANDBOX_IMAGE.rsplit(":", 1)[0])
_ARCHIVE_ID = re.compile(r"-([0-9a-f]{12})\.oci\.tar$")
_ROOTFS_KEY = re.compile(r"^rootfs-.*-([0-9a-f]{12})\.tar$")


# Another checkout sharing the cache may have built an image a moment ago and not yet imported it
# into its node: images younger than this are never pruned.
KEEP_RECENT_SECONDS = 1800


def superseded_images(images: list[dict], keep: set[str], now: float) -> list[str]:
    """Ids of the images (``buildah images --json`` entries) that only earlier builds use: every
    image of a managed repository none of whose names is in ``keep``, built more than
    KEEP_RECENT_SECONDS ago. Images of other repositories, and untagged ones (layers, left to
    `rmi --prune`), are never chosen."""
    out = []
    for entry in images:
        names = entry.get("names") or []
        if not names or any(n in keep for n in names):
            continue
        if now - float(entry.get("created") or now) < KEEP_RECENT_SECONDS:
            continue
        if all(n.rsplit(":", 1)[0] in MANAGED_REPOSITORIES for n in names):
            out.append(str(entry["id"]))
    return out


def stale_files(paths: list[Path], live_ids: set[str]) -> list[Path]:
    """Files of images_dir() no image in the storage needs: OCI archives of image ids that are
    gone, and rootfs tarballs of another base recipe. Partial files are a running push's."""
    short = {i.removeprefix("sha256:")[:12] for i in live_ids}
    stale = []
    for path in paths:
        archive, rootfs = _ARCHIVE_ID.search(path.name), _ROOTFS_KEY.match(path.name)
        if (archive and archive.group(1) not in short) or (rootfs and rootfs.group(1) != _BASE_KEY):
            stale.append(path)
    return stale


def prune(current: str) -> list[str]:
    """Remove what earlier builds left behind; returns what was removed. vfs storage copies every
    layer in full, so each rebuild would otherwise keep ~1.4 GB (enough, once, to fill the disk
    and have the kubelet evict pods for DiskPressure). Kept: ``current`` (with its ``:dev`` tag
    and its layers), the build stage (BUILD_STAGE: its layers are the next build's cache, pip's
    above all), the base and sandbox images, and any image built
    in the last KEEP_RECENT_SECONDS (another checkout's). Pods already running are unaffected:
    containerd holds its own copy of the images it imported."""
    keep = {current, f"{IMAGE_REPOSITORY}:dev", BUILD_STAGE, BASE_IMAGE, SANDBOX_IMAGE}
    removed = []
    listed = json.loads(_run(buildah_cmd("images", "--json")) or "[]")
    for ident in superseded_images(listed, keep, time.time()):
        # `buildah rmi` removes an image together with its untagged parents no other image uses.
        result = subprocess.run(buildah_cmd("rmi", ident), capture_output=True, text=True)
        if result.returncode == 0:
            removed.append(ident[:12])
        else:
            _say(f"could not remove superseded image {ident[:12]}: {result.stderr.strip()[-300:]}")
    # Untagged images without children: layers of interrupted builds.
    subprocess.run(buildah_cmd("rmi", "--prune"), capture_output=True, text=True)
    live = {str(e["id"]) for e in json.loads(_run(buildah_cmd("images", "--json")) or "[]")}
    for path in stale_files(sorted(images_dir().iterdir()), live):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        _say(f"pruned what earlier builds left: {', '.join(removed)}")
    return removed


def image_size(name: str) -> str:
    """Uncompressed size of an image's layers, as `docker images` shows it."""
    for entry in json.loads(_run(buildah_cmd("images", "--json", name)) or "[]"):
        return str(entry.get("size", "?"))
    return "?"


def oci_archive(name: str) -> Path:
    """An OCI archive of ``name`` for `ctr images import` (written once per image id)."""
    ident = image_id(name)
    if not ident:
        raise ImageError(f"image {name} is not built")
    path = images_dir() / f"{name.rsplit('/', 1)[-1].replace(':', '_')}-{ident[:12]}.oci.tar"
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _run(buildah_cmd("push", name, f"oci-archive:{partial}:{name}"))
        partial.replace(path)
    return path
