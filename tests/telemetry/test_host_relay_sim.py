"""End to end on the emulated fleet (`dpufleet sim up --host-relay`): the control plane with its fleet bus, a host
whose agent serves the host relay, its DPU's agent reporting over mTLS. An `agent-partition` fault cuts the DPU
off from the bus; its telemetry goes to its host, sealed; when the fault is cleared it reaches the aggregator in
order, every sample accounted for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.net import wait_until
from tests.support.telemetry import Plane, telemetry_plane

from dpufleet.api.naming import dpu_name
from dpufleet.api.telemetry import CLASSES_ANNOTATION, INTERVAL_ANNOTATION
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread

pytestmark = pytest.mark.timeout(240)
BASE = "/apis/dpufleet.io/v1alpha1/projects/default"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    with telemetry_plane(tmp_path_factory.mktemp("relay-sim")) as built:
        yield built


def _fault(running: SimRunning, method: str, **body: str) -> None:
    assert running.control_url is not None
    headers = {"Authorization": f"Bearer {running.control_token}"}
    with httpx.Client(base_url=running.control_url, headers=headers, timeout=10) as http:
        if method == "POST":
            resp = http.post("/sim/v1/faults", json={**body, "duration": None})
        else:
            resp = http.delete("/sim/v1/faults", params=body)
    assert resp.status_code < 300, resp.text


def test_a_partitioned_dpu_keeps_its_telemetry_on_its_host_and_forwards_it_when_the_fault_clears(
    plane: Plane, tmp_path: Path
) -> None:
    options = SimOptions(
        hosts=1, dpus_per_host=1, seed=29, directory=tmp_path / "sim", time_scale=0.005, server=plane.api.url,
        token=plane.api.token, register=False, heartbeat_seconds=0.5, host_relay=True,
    )  # fmt: skip
    with sim_in_thread(options) as running:
        serial = running.fleet.dpus[0].serial
        name = dpu_name(serial)
        with plane.api.client() as http:  # the DPU object names its project; its agents are taken in then
            annotations = {CLASSES_ANNOTATION: "load", INTERVAL_ANNOTATION: "0.5"}
            doc = {"kind": "DPU", "metadata": {"name": name, "annotations": annotations},
                   "spec": {"serialNumber": serial}}  # fmt: skip
            resp = http.post(f"{BASE}/dpus", json=doc)
            assert resp.status_code == 201, resp.text
        agent = next(a for a in running.agents if a.config.role == "dpu")
        host = next(a for a in running.agents if a.config.role == "host")
        aggregator = plane.telemetry
        wait_until(lambda: (s := aggregator.series.get(serial)) is not None and s.received.get("load", 0) > 0,
                   60, what="load samples at the aggregator")  # fmt: skip
        assert agent.telemetry is not None and agent.telemetry.relay is not None and host.relay is not None

        _fault(running, "POST", dpu=serial, kind="agent-partition")
        telemetry = agent.telemetry
        wait_until(lambda: sum(telemetry.accounting().bufferedOnHost.values()) >= 3 * 200, 60,
                   what="batches kept on the host")  # fmt: skip
        kept = sorted((host.relay.root / "store" / serial.upper()).iterdir())
        assert kept and all(b"system.cpu" not in p.read_bytes() for p in kept)  # sealed on the DPU

        _fault(running, "DELETE", dpu=serial)

        def drained() -> bool:
            series = aggregator.series.get(serial)
            acc = series.accounting if series is not None else None
            return acc is not None and not acc.buffered and acc.delivered == dict(series.received)  # type: ignore[union-attr]

        deadline = time.monotonic() + 60
        while not drained():
            assert time.monotonic() < deadline, f"never drained: {telemetry.accounting()}"
            time.sleep(0.2)
        assert telemetry.accounting().dropped == {}  # nothing lost on the way through the host
        store = host.relay.root / "store" / serial.upper()

        def listed() -> bool:  # the host keeps exactly what the DPU lists as kept there (its copies removed)
            return {p.name for p in store.iterdir()} == {telemetry._name(e) for e in list(telemetry.on_host.values())}

        wait_until(listed, 10, what="the host's copies removed once forwarded")
