"""A client generated from the server's own OpenAPI document works: given the running server, when
openapi-python-client generates a client from /openapi.json, then that client creates DPUs, lists them
page by page and watches them (the watch ends at its timeoutSeconds), with the kinds' own types."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.server import RunningServer, threaded_server

pytestmark = pytest.mark.timeout(180)
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with threaded_server(tmp_path_factory.mktemp("generated") / "data", controllers=False) as running:
        yield running


@pytest.fixture(scope="module")
def generated(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The generated package, importable as dpufleet_client."""
    where = tmp_path_factory.mktemp("client")
    spec = where / "openapi.json"
    spec.write_text(httpx.get(api.url + "/openapi.json", timeout=10).text)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [
            str(VENV_BIN / "openapi-python-client"),
            *("generate", "--path", str(spec), "--output-path", str(where / "dpufleet_client"), "--meta", "none"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=where,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module("dpufleet_client")
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == "dpufleet_client" or m.startswith("dpufleet_client.")]:
            del sys.modules[name]


def test_a_generated_client_creates_lists_in_pages_and_watches_dpus(api: RunningServer, generated: Any) -> None:
    create_dpu = importlib.import_module("dpufleet_client.api.dpus.create_dpu")
    list_dpus = importlib.import_module("dpufleet_client.api.dpus.list_dpus")
    watch_dpus = importlib.import_module("dpufleet_client.api.dpus.watch_dpus")
    models = importlib.import_module("dpufleet_client.models")
    client = generated.AuthenticatedClient(base_url=api.url, token=api.token, timeout=httpx.Timeout(10.0))

    for i in range(5):
        body = models.DPU.from_dict(
            {"kind": "DPU", "metadata": {"name": f"gen-{i}"}, "spec": {"serialNumber": f"MT{i:04d}", "hostRef": "h1"}}
        )
        created = create_dpu.sync(project="gen", client=client, body=body)
        assert isinstance(created, models.DPU), created
        assert created.metadata.name == f"gen-{i}" and created.spec.serial_number == f"MT{i:04d}"

    names: list[str] = []
    token: Any = generated.types.UNSET
    for _ in range(10):
        page = list_dpus.sync(project="gen", client=client, limit=2, continue_=token, field_selector="spec.hostRef=h1")
        assert isinstance(page, models.DPUList), page
        names += [item.metadata.name for item in page.items]
        if not page.metadata.continue_:
            break
        token = page.metadata.continue_
    assert names == [f"gen-{i}" for i in range(5)]

    started = time.monotonic()
    streamed = watch_dpus.sync_detailed(project="gen", client=client, timeout_seconds=1)
    assert time.monotonic() - started < 8, "the watch ended at its timeout"
    assert streamed.status_code == 200
    events = [json.loads(line) for line in streamed.content.splitlines() if line.strip()]
    assert [e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"] == names
    assert events[-1]["type"] == "BOOKMARK"
