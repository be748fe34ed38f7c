"""Shared pieces of the discovery specs: a real API server with its controllers, an operator's view
of it (create through HTTP, wait for status), and tiny HTTP services that are not (good) Redfish.

Everything listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from support.net import free_port
from support.server import BASE, RunningServer, threaded_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            found: dict[str, Any] = cond
            return found
    return None


def is_true(obj: dict[str, Any], type_: str) -> bool:
    cond = condition(obj, type_)
    return cond is not None and cond.get("status") == "True"


@dataclass
class Operator:
    """What an operator does with the HTTP API, in one project."""

    http: httpx.Client
    project: str

    def path(self, plural: str, name: str | None = None) -> str:
        base = f"{BASE}/projects/{self.project}/{plural}"
        return f"{base}/{name}" if name else base

    def create(self, plural: str, doc: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(self.path(plural), json=doc)
        assert resp.status_code == 201, f"creating {plural}: HTTP {resp.status_code}: {resp.text}"
        created: dict[str, Any] = resp.json()
        return created

    def replace(self, plural: str, doc: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.put(self.path(plural, doc["metadata"]["name"]), json=doc)
        assert resp.status_code == 200, f"replacing {plural}: HTTP {resp.status_code}: {resp.text}"
        replaced: dict[str, Any] = resp.json()
        return replaced

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        resp = self.http.get(self.path(plural, name))
        if resp.status_code == 404:
            return None
        assert resp.status_code == 200, resp.text
        found: dict[str, Any] = resp.json()
        return found

    def objects(self, plural: str) -> list[dict[str, Any]]:
        resp = self.http.get(self.path(plural))
        assert resp.status_code == 200, resp.text
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        return [
            ev
            for ev in self.objects("events")
            if ev["involvedObject"]["kind"] == kind and ev["involvedObject"]["name"] == name
        ]

    def credential(self, name: str, username: str, password: str) -> None:
        self.create(
            "credentials",
            {"kind": "Credential", "metadata": {"name": name}, "spec": {"username": username, "password": password}},
        )

    def discovery(self, name: str, **spec: Any) -> dict[str, Any]:
        spec.setdefault("schemes", ["http"])
        spec.setdefault("probeTimeoutSeconds", 2.0)
        return self.create("discoveries", {"kind": "Discovery", "metadata": {"name": name}, "spec": spec})

    def wait_for(self, what: str, fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 15.0) -> Any:
        """Poll `fetch` until `done(value)`; fail naming `what` and showing the last value."""
        deadline = time.monotonic() + timeout
        value = fetch()
        while not done(value):
            if time.monotonic() > deadline:
                shown = json.dumps(value, indent=1, default=str)[:4000]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen:\n{shown}")
            time.sleep(0.05)
            value = fetch()
        return value

    def wait_object(
        self, plural: str, name: str, done: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        found: dict[str, Any] = self.wait_for(
            f"{plural}/{name}", lambda: self.get(plural, name), lambda o: o is not None and done(o), timeout
        )
        return found

    def wait_scanned(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """The discovery once its first scan has finished."""
        return self.wait_object("discoveries", name, lambda d: bool(d["status"].get("lastScanFinished")), timeout)

    def wait_bmc_settled(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """The BMC once the BMC controller has written a Ready condition."""
        return self.wait_object("bmcs", name, lambda b: condition(b, "Ready") is not None, timeout)


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


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}
    fallback: Route = (404, "text/plain", b"not found")

    def do_GET(self) -> None:
        status, ctype, body = self.routes.get(self.path.rstrip("/") or "/", self.fallback)
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


def serve_routes(routes: dict[str, Route], fallback: Route | None = None) -> TinyService:
    """A plain HTTP server on 127.0.0.1 answering GETs from a fixed table, in a daemon thread."""
    handler = type("Handler", (_Handler,), {"routes": routes, "fallback": fallback or _Handler.fallback})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return TinyService(f"http://127.0.0.1:{server.server_address[1]}", server)


def as_json(body: Any, status: int = 200) -> Route:
    return status, "application/json", json.dumps(body).encode()
