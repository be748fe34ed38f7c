"""Shared fixtures: a private PostgreSQL for the session, and a `store` on each backend.

PostgreSQL tests are marked `postgres`. Without PostgreSQL they skip with the reason,
except under CI=true, where they fail: CI must never pass by silently testing less.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpufleet.store.store import Store, default_sqlite_url
from support.postgres import PostgresServer, PostgresUnavailable

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL 15 (started on first use, stopped at the end)."""
    try:
        server = PostgresServer.start()
    except (PostgresUnavailable, OSError) as exc:
        message = f"private PostgreSQL could not start: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the private server, dropped after the test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty store on each backend."""
    if request.param == "sqlite":
        return default_sqlite_url(tmp_path)
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated, empty Store on SQLite (temp file) and on PostgreSQL (fresh database)."""
    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()
