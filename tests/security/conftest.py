"""A real API server (SQLite, no controllers) per module, and tokens for every role."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from support.server import RunningServer, threaded_server


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with threaded_server(tmp_path_factory.mktemp("security") / "data", controllers=False) as running:
        yield running


@pytest.fixture(scope="module")
def admin(api: RunningServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def make_token(admin: httpx.Client, name: str, *grants: str, expires: str | None = None) -> str:
    body: dict[str, object] = {"name": name, "grants": list(grants)}
    if expires:
        body["expires"] = expires
    response = admin.post("/auth/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def as_token(api: RunningServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
