"""The API server keeps an idle kept-alive connection open longer than its clients do.

With uvicorn's default (5 s, as httpx's own keepalive_expiry) the server could close an idle connection
just as a client sent its next request on it: the request failed (ReadError, "Server disconnected"),
which is what a bench's PATCH met under load. The real `serve()` in its own process, a client that keeps
connections 6 s: a request 5.5 s after the last one travels on the same connection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.server.common import KEEP_ALIVE_SECONDS
from support.server import start_server_process

pytestmark = pytest.mark.timeout(60)


def test_an_idle_kept_alive_connection_outlives_httpx_keepalive_expiry(tmp_path: Path) -> None:
    assert KEEP_ALIVE_SECONDS > 5, "longer than httpx's default keepalive_expiry (5 s)"
    server = start_server_process(tmp_path / "data", controllers=False)
    connects: list[str] = []

    def trace(event: str, _info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            connects.append(event)

    try:
        limits = httpx.Limits(max_connections=1, keepalive_expiry=6.0)
        with httpx.Client(base_url=server.url, limits=limits, timeout=5) as client:
            assert client.get("/readyz", extensions={"trace": trace}).status_code == 200
            time.sleep(5.5)  # idle past uvicorn's default keep-alive (5 s), within the client's 6 s
            assert client.get("/readyz", extensions={"trace": trace}).status_code == 200
        assert len(connects) == 1, "the second request had to open a new connection: the server closed the idle one"
    finally:
        server.stop()
