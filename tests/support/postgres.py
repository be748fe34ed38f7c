"""A private PostgreSQL 15 server for the test session, in a temp dir, on a free loopback port.

Never touches the stock cluster: its own data dir, socket dir and port. Started once per
session (about 1 s) and stopped by its own pg_ctl at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from .net import free_port

PG_BIN = Path(os.environ.get("DPUFLEET_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be installed or started; the message says why."""


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _ensure_binaries() -> None:
    if (PG_BIN / "initdb").exists():
        return
    if os.geteuid() != 0:
        raise PostgresUnavailable(f"{PG_BIN}/initdb is missing and we are not root to 'apt-get install postgresql'")
    if shutil.which("apt-get") is None:
        raise PostgresUnavailable(f"{PG_BIN}/initdb is missing and apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(
        ["apt-get", "install", "-y", "postgresql"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if proc.returncode != 0 or not (PG_BIN / "initdb").exists():
        raise PostgresUnavailable(
            f"'apt-get install -y postgresql' (exit {proc.returncode}) did not provide {PG_BIN}/initdb: "
            f"{proc.stderr[-2000:]}"
        )


@dataclass
class PostgresServer:
    """One running private server. `url(db)` names a database on it."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls) -> PostgresServer:
        if os.geteuid() != 0:
            raise PostgresUnavailable("the private PostgreSQL is started with 'runuser -u postgres', which needs root")
        _ensure_binaries()
        root = Path(tempfile.mkdtemp(prefix="dpufleet-pg-"))
        os.chmod(root, 0o755)
        proc = _run(["install", "-d", "-o", "postgres", "-g", "postgres", str(root / "pg")])
        if proc.returncode != 0:
            raise PostgresUnavailable(f"install -d failed: {proc.stderr}")
        server = cls(root / "pg", free_port())
        proc = _run(
            [
                "runuser", "-u", "postgres", "--",
                str(PG_BIN / "initdb"), "-D", str(server.data), "-U", "postgres", "--auth=trust", "--no-sync",
            ]
        )  # fmt: skip
        if proc.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {proc.stdout}{proc.stderr}")
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.root} -c fsync=off -c max_connections=200"
        proc = _run(
            [
                "runuser", "-u", "postgres", "--",
                str(PG_BIN / "pg_ctl"), "-D", str(server.data), "-l", str(server.root / "pg.log"), "-w", "-t", "30",
                "-o", options, "start",
            ]
        )  # fmt: skip
        if proc.returncode != 0:
            log = (server.root / "pg.log").read_text() if (server.root / "pg.log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\n{log[-2000:]}")
        return server

    def stop(self) -> None:
        _run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]
        )
        shutil.rmtree(self.root.parent, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
