"""Shared pieces of the discovery specs: a real API server with its controllers, an operator's view
of it (create through HTTP, wait for status), and tiny HTTP services that are not (good) Redfish.

Everything listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.net import free_port
from support.operator import Operator as Operator
from support.operator import condition as condition
from support.operator import is_true as is_true
from support.server import RunningServer, threaded_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The real API server (SQLite) with its in-process controllers, for one test module."""
    with threaded_server(tmp_path_factory.mktemp("api"), controllers=True) as running:
        yield running


@pytest.fixture(scope="module")
def http(api: RunningServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    return free_port()


# --- services that are not (good) Redfish -----------------------------------------------------------------

Route = tuple[int, str, bytes]  # status, content type, body
UNAUTHORIZED = b'{"error": {"code": "Base.1.8.NoValidSession", "message": "credentials required"}}'


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}
    fallback: Route = (404, "text/plain", b"not found")
    authorization: str | None = None  # the Authorization header every path but the service root needs
    open_paths = frozenset({"/redfish/v1", "/redfish"})

    def do_GET(self) -> None:
        path = self.path.rstrip("/") or "/"
        status, ctype, body = self.routes.get(path, self.fallback)
        if (
            self.authorization
            and path not in self.open_paths
            and self.headers.get("Authorization") != self.authorization
        ):
            status, ctype, body = 401, "application/json", UNAUTHORIZED
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@dataclass
class TinyService:
    url: str
    server: ThreadingHTTPServer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_routes(
    routes: dict[str, Route], fallback: Route | None = None, basic_auth: tuple[str, str] | None = None
) -> TinyService:
    """A plain HTTP server on 127.0.0.1 answering GETs from a fixed table, in a daemon thread; with
    `basic_auth` (user, password), every path but the service root answers 401 without them."""
    authorization = "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode() if basic_auth else None
    handler = type(
        "Handler",
        (_Handler,),
        {"routes": routes, "fallback": fallback or _Handler.fallback, "authorization": authorization},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return TinyService(f"http://127.0.0.1:{server.server_address[1]}", server)


def as_json(body: Any, status: int = 200) -> Route:
    return status, "application/json", json.dumps(body).encode()


# --- Redfish trees captured or published elsewhere (tests/data/redfish/<tree>/...) ----------------------

REDFISH_TREES = Path(__file__).resolve().parents[1] / "data" / "redfish"


def tree_routes(tree: str) -> dict[str, Route]:
    """A static Redfish tree (one `<path>/index.json` per resource, as DMTF's mockups are laid out)
    as routes under /redfish/v1: a BMC that answers exactly what the tree holds, and 404 otherwise."""
    root = REDFISH_TREES / tree
    routes: dict[str, Route] = {}
    for path in sorted(root.rglob("index.json")):
        relative = path.parent.relative_to(root).as_posix()
        url = "/redfish/v1" + ("" if relative == "." else "/" + relative)
        routes[url] = (200, "application/json", path.read_bytes())
    return routes
