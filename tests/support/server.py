"""Running the real API server for tests: in a thread (uvicorn) or as its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from dpufleet.images.repository import advertise_repository
from dpufleet.server.common import uvicorn_options
from dpufleet.server.runner import Server

from .net import free_port, wait_until

BASE = "/apis/dpufleet.io/v1alpha1"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    token: str
    server: Server | None = None

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10.0, **kwargs
        )  # type: ignore[arg-type]


@contextmanager
def threaded_server(
    data_dir: Path,
    db_url: str | None = None,
    *,
    controllers: bool = True,
    telemetry_bus: str | None = None,
    otlp_endpoint: str | None = None,
) -> Iterator[RunningServer]:
    """Server.build + uvicorn on 127.0.0.1 in a background thread; stopped on exit."""
    built = Server.build(
        data_dir, db_url, controllers=controllers, telemetry_bus=telemetry_bus, otlp_endpoint=otlp_endpoint
    )
    port = free_port()
    advertise_repository(built.services.repository, "127.0.0.1", port)  # as serve() does, before any controller runs
    config = uvicorn.Config(
        built.app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **uvicorn_options()
    )
    userver = uvicorn.Server(config)
    thread = threading.Thread(target=userver.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), timeout=20, what="the API server's /readyz")
        token = built.state.auth.admin_token_path.read_text().strip()
        yield RunningServer(url, data_dir, token, built)
    finally:
        userver.should_exit = True
        thread.join(timeout=10)
        built.store.close()


SERVE_SCRIPT = """
import logging, sys
from pathlib import Path
from dpufleet.server.runner import serve
logging.basicConfig(level=logging.WARNING)
serve(Path(sys.argv[1]), sys.argv[2] or None, sys.argv[3], controllers=sys.argv[4] == "1")
"""


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class PortTaken(AssertionError):
    """The free port picked was taken before the child bound it (its own agent listener's bind to
    port 0 may be handed the same ephemeral port)."""


def start_server_process(data_dir: Path, db_url: str | None = None, *, controllers: bool = True) -> ServerProcess:
    """`serve()` in a child python process on a free loopback port, once /readyz answers; a port taken
    in the meantime is tried again on another one (three tries), said in the error if all fail.
    With controllers (the default of `serve()`), they run in a child process of that server."""

    def command(port: int) -> list[str]:
        listen = f"127.0.0.1:{port}"
        return [sys.executable, "-c", SERVE_SCRIPT, str(data_dir), db_url or "", listen, "1" if controllers else "0"]

    return _retrying(data_dir, command)


def start_cli_server(data_dir: Path, *args: str) -> ServerProcess:
    """`dpufleet server --data-dir DIR --listen 127.0.0.1:<free port> --agent-listen 127.0.0.1:0 *args`,
    as a user runs it, once /readyz answers (a port taken meanwhile is tried again, as above)."""

    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dpufleet.main",
            "server",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--agent-listen",
            "127.0.0.1:0",
            *args,
        ]

    return _retrying(data_dir, command)


def _retrying(data_dir: Path, command: Callable[[int], list[str]]) -> ServerProcess:
    for attempt in range(3):
        try:
            return _start_server_process(data_dir, command)
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_server_process(data_dir: Path, command: Callable[[int], list[str]]) -> ServerProcess:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(proc, url, data_dir, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            output = log_path.read_text()[-3000:]
            if f"('127.0.0.1', {port}): address already in use" in output:
                raise PortTaken(f"port {port} was taken before the server bound it: {output}")
            raise AssertionError(f"server exited with {proc.returncode}: {output}")
        return _ready(url)

    try:
        wait_until(up, timeout=30, interval=0.05, what="the server process's /readyz")
    except BaseException:
        server.kill()
        raise
    return server
