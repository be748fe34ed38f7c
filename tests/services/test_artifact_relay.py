"""Given a host relay (the host agent's aiohttp server on loopback) and the DPU's real service runtime with no
route of its own to the artifact: the artifact comes through the host, fetched there once for all its DPUs,
and the DPU still checks its digest; the relay fetches only from the hosts it is told; with neither a route
nor a relay the DPU says so."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.agent.host_relay_server import HostRelay
from dpufleet.agent.services import MODULE_FILE, ServiceRuntime, ServicesConfig
from dpufleet.api.agent_services import DesiredInstance
from dpufleet.api.kinds import DPUServiceSpec
from dpufleet.services.desired import desired_instance

CONTENT = b"\x7fELF" + bytes(range(256)) * 64


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    where = tmp_path_factory.mktemp("repository")
    (where / "offload.ko").write_bytes(CONTENT)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(where)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/offload.ko", hashlib.sha256(CONTENT).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def _instance(url: str, sha: str) -> DesiredInstance:
    spec = DPUServiceSpec.model_validate(
        {
            "artifact": {"kernelModule": {"url": url, "sha256": sha, "name": "offload"}},
            "placement": {"mode": "EveryDPU"},
        }
    )
    return desired_instance("offload", "offload/dpu-a", spec)


def _runtime(where: Path, relay: str | None) -> ServiceRuntime:
    config = ServicesConfig(where, dpu="dpu-a", host_relay=relay)
    return ServiceRuntime(config, "http://127.0.0.1:9", lambda: None, uplink=lambda: False)  # type: ignore[arg-type,return-value]


def test_a_dpu_with_no_route_gets_its_artifact_through_its_host_fetched_there_once(
    tmp_path: Path, served: tuple[str, str]
) -> None:
    url, sha = served

    async def scenario() -> None:
        relay = HostRelay(tmp_path / "host", ["127.0.0.1"])
        await relay.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{relay.port}"
        runtimes = [_runtime(tmp_path / f"dpu{i}", base) for i in range(2)]
        try:
            layouts = await asyncio.gather(*(rt.pull(_instance(url, sha)) for rt in runtimes))
            for layout in layouts:
                assert (layout / MODULE_FILE).read_bytes() == CONTENT
            assert relay.fetched == 1  # two DPUs of the host, one download
            assert (tmp_path / "host/relay/artifacts" / sha).read_bytes() == CONTENT

            # a relay whose copy was altered: the DPU's own digest check refuses it, nothing is kept
            (tmp_path / "host/relay/artifacts" / sha).write_bytes(CONTENT[:-1] + b"!")
            third = _runtime(tmp_path / "dpu3", base)
            runtimes.append(third)
            with pytest.raises(ValueError, match=r"\(through the host relay\) has sha256 .*: not run"):
                await third.pull(_instance(url, sha))
            assert not list((tmp_path / "dpu3/artifacts").glob("*"))
        finally:
            for rt in runtimes:
                await rt.shutdown()
            await relay.stop()

    asyncio.run(scenario())


def test_the_relay_fetches_only_from_the_hosts_it_is_told_and_no_route_without_one_is_said(
    tmp_path: Path, served: tuple[str, str]
) -> None:
    url, sha = served

    async def scenario() -> None:
        relay = HostRelay(tmp_path / "host", ["cp.example.net"])
        await relay.start("127.0.0.1", 0)
        rt = _runtime(tmp_path / "dpu", f"http://127.0.0.1:{relay.port}")
        alone = _runtime(tmp_path / "alone", None)
        try:
            with pytest.raises(ValueError, match=r"fetches only from cp\.example\.net \(--relay-origin\), not 127"):
                await rt.pull(_instance(url, sha))
            assert relay.fetched == 0 and not (tmp_path / "host/relay/artifacts").exists()
            with pytest.raises(httpx.ConnectError, match="network is unreachable"):
                await alone.pull(_instance(url, sha))
        finally:
            await rt.shutdown()
            await alone.shutdown()
            await relay.stop()

    asyncio.run(scenario())
