"""A server killed mid-burst loses nothing it acknowledged, and its change log still matches its objects."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from dpufleet.store.store import Store, default_sqlite_url
from support.server import BASE, start_server_process

WRITERS = 4
KILL_AFTER = 60  # acknowledged creates before the SIGKILL
MAX_PER_WRITER = 400  # bound on the burst even if the kill came late


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


def body(name: str) -> dict[str, object]:
    return {
        "kind": "DPU",
        "metadata": {"name": name, "labels": {"burst": "1"}},
        "spec": {"serialNumber": f"SN-{name}", "hostRef": f"host-{name}"},
    }


def test_acknowledged_creates_survive_sigkill(tmp_path: Path, db_url: str | None) -> None:
    data_dir = tmp_path / "data"
    server = start_server_process(data_dir, db_url)
    acked: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    url = f"{server.url}{BASE}/projects/default/dpus"
    headers = {"Authorization": f"Bearer {server.token}"}

    def writer(index: int) -> None:
        with httpx.Client(headers=headers, timeout=5) as client:
            for n in range(MAX_PER_WRITER):
                name = f"w{index}-{n}"
                try:
                    response = client.post(url, json=body(name))
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code != 201:
                    return
                with lock:
                    acked.append(name)
                    if len(acked) >= KILL_AFTER:
                        enough.set()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    try:
        for t in threads:
            t.start()
        assert enough.wait(timeout=60), f"only {len(acked)} creates acknowledged"
        server.kill()
    finally:
        server.kill()
        for t in threads:
            t.join(timeout=30)
    assert len(acked) >= KILL_AFTER

    restarted = start_server_process(data_dir, db_url)
    try:
        with httpx.Client(base_url=restarted.url, headers=headers, timeout=10) as client:
            for name in acked:
                response = client.get(f"{BASE}/projects/default/dpus/{name}")
                assert response.status_code == 200, f"acknowledged create {name} was lost"
                obj = response.json()
                assert obj["spec"]["serialNumber"] == f"SN-{name}" and obj["spec"]["hostRef"] == f"host-{name}"
                assert obj["metadata"]["labels"] == {"burst": "1"}
            # the restarted server takes writes again
            assert client.post(f"{BASE}/projects/default/dpus", json=body("after-restart")).status_code == 201
    finally:
        restarted.stop()

    store = Store.open(db_url or default_sqlite_url(data_dir))
    try:
        objects = store.list("DPU").items
        log = {c.rv: c for c in store.changes_since(0, limit=100_000)}
        assert set(acked) <= {o["metadata"]["name"] for o in objects}
        for obj in objects:  # including creates that landed but were never acknowledged
            rv = int(obj["metadata"]["resourceVersion"])
            assert rv in log, f"{obj['metadata']['name']} has resourceVersion {rv} missing from the change log"
            assert log[rv].object() == obj
            assert obj["spec"]["serialNumber"] == f"SN-{obj['metadata']['name']}"
        assert max(log) == store.current_rv()
        rvs = sorted(log)
        assert rvs == list(range(rvs[0], rvs[-1] + 1)), "the change log has a hole"
    finally:
        store.close()
