"""A small OCI image for services on the emulated fleet: a busybox root filesystem, packed with umoci.

There is no container registry here: images are built locally (the runtime tests, `dpufleet bench
services`). Needs umoci and a static busybox (Debian's busybox-static, which `./run` installs as root).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

APPLETS = (
    "sh",
    "sleep",
    "echo",
    "cat",
    "ls",
    "nc",
    "httpd",
    "ip",
    "touch",
    "mount",
    "grep",
    "kill",
    "true",
    "false",
    "mkdir",
    "printf",
    "chmod",
)


def tools_missing() -> list[str]:
    return [t for t in ("runc", "umoci", "busybox") if shutil.which(t) is None]


def busybox_rootfs(rootfs: Path) -> None:
    """A static busybox and its applets under `rootfs`/bin, and an empty /etc."""
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox")
    assert busybox is not None
    shutil.copy(busybox, bin_dir / "busybox")
    for applet in APPLETS:
        (bin_dir / applet).symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)


def build_bundle(where: Path) -> tuple[Path, str]:
    """A native process bundle: a gzipped tar of a busybox root filesystem: (the archive, its sha256)."""
    rootfs = where / "bundle-rootfs"
    busybox_rootfs(rootfs)
    archive = where / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(rootfs.iterdir()):
            tar.add(item, arcname=item.name)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def build_archive(
    where: Path, entrypoint: list[str] | None = None, extra: dict[str, Path] | None = None
) -> tuple[Path, str]:
    """A busybox OCI image archived as a tar of its layout: (the archive, its sha256). `extra`: more files
    for its root filesystem (path in the image -> file here), such as the tally service's binary."""
    layout, bundle = where / "layout", where / "bundle"
    for args in (
        ["init", "--layout", str(layout)],
        ["new", "--image", f"{layout}:latest"],
        ["unpack", "--image", f"{layout}:latest", str(bundle)],
    ):
        subprocess.run(["umoci", *args], check=True, capture_output=True)
    busybox_rootfs(bundle / "rootfs")
    for inside, source in (extra or {}).items():
        target = bundle / "rootfs" / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    subprocess.run(["umoci", "repack", "--image", f"{layout}:latest", str(bundle)], check=True, capture_output=True)
    config = ["umoci", "config", "--image", f"{layout}:latest"]
    for i, arg in enumerate(entrypoint or ["/bin/sleep", "3600"]):
        config += ["--config.entrypoint" if i == 0 else "--config.cmd", arg]
    subprocess.run(config, check=True, capture_output=True)
    subprocess.run(["umoci", "gc", "--layout", str(layout)], check=True, capture_output=True)
    archive = where / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for item in sorted(layout.iterdir()):
            tar.add(item, arcname=item.name)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()
