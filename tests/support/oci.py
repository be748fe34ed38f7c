"""Serve the emulator's small OCI image (dpufleet.sim.oci) over HTTP on loopback, for the runtime tests."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dpufleet.sim.oci import build_archive, tools_missing

__all__ = ["build_archive", "served_image", "tools_missing"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def served_image(where: Path, extra: dict[str, Path] | None = None) -> Iterator[dict[str, str]]:
    """A busybox OCI archive (with `extra` files) built in `where` and served over HTTP on loopback:
    {url, sha256, base}."""
    archive, sha = build_archive(where, extra=extra)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(where)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        yield {"url": f"{base}/{archive.name}", "sha256": sha, "base": base, "path": str(archive)}
    finally:
        server.shutdown()
        server.server_close()
