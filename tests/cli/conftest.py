"""A real API server (SQLite, in-process controllers) per test module, and helpers to run the CLI against it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpufleet.demo import EmbeddedServer
from dpufleet.main import app


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class CLI:
    """Runs `dpufleet ...` with the server and token in the environment, as a user would after login."""

    env: dict[str, str]

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Run:
        result = CliRunner().invoke(app, list(args), input=input, env={**self.env, **(env or {})})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Run(result.exit_code, result.stdout, result.stderr)

    def subprocess(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "dpufleet.main", *args],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    embedded = EmbeddedServer.start(tmp_path_factory.mktemp("server"), "127.0.0.1:0")
    try:
        embedded.wait_ready()
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def cli(server: EmbeddedServer, tmp_path: Path) -> CLI:
    return CLI(
        {
            "DPUFLEET_SERVER": server.url,
            "DPUFLEET_TOKEN": server.token(),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "DPUFLEET_PROJECT": "",
            "COLUMNS": "200",
        }
    )
