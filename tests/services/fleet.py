"""An emulated fleet whose DPUs run services for real (runc), provisioned and Ready: for the runtime tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover, image_doc, upload
from support.server import RunningServer

PAYLOAD = b"emulated DPU OS image\n" * 500
VERSION = "DOCA_2.11.0_BSP_4.11.0_Ubuntu_22.04-1.1"


@contextmanager
def services_fleet(
    api: RunningServer, directory: Path, hosts: int = 1, network: bool = False, profiles: list[str] | None = None
) -> Iterator[SimRunning]:
    """`hosts` hosts with one DPU each, every DPU with a service runtime, reporting often (and, with
    `network`, a real Open vSwitch each). `profiles`: the DPUs' vendor profiles, host i taking the i-th."""
    options = SimOptions(
        profiles=profiles or ["nvidia-bluefield-3"],
        hosts=hosts,
        dpus_per_host=1,
        seed=17,
        directory=directory,
        time_scale=0.005,
        server=api.url,
        token=api.token,
        register=False,
        heartbeat_seconds=1.0,
        services=True,
        services_dpus=hosts,
        services_interval=0.3,
        network=network,
        network_dpus=hosts if network else 0,
        network_interval=0.3,
    )
    with sim_in_thread(options) as running:
        yield running


def provision(api: RunningServer, fleet: SimRunning) -> Iterator[Operator]:
    """Discover the fleet's DPUs and provision each with an OS image; yields the operator once all are Ready."""
    with api.client() as http:
        op = Operator(http, "default")
        dpus = discover(op, fleet)
        assert upload(http, PAYLOAD).status_code == 201
        op.create("images", image_doc("os", VERSION, PAYLOAD))
        for dpu in dpus:
            resp = http.patch(
                op.path("dpus", dpu),
                json={"spec": {"image": "os"}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert resp.status_code == 200, resp.text
        for dpu in dpus:
            op.wait_object("dpus", dpu, lambda s: s["status"].get("phase") == "Ready", timeout=90)
        yield op


def service(name: str, image: dict[str, str], script: str, **spec: Any) -> dict[str, Any]:
    """An every-DPU service running `script` in the test image."""
    return {
        "kind": "DPUService",
        "metadata": {"name": name},
        "spec": {
            "artifact": {"ociArchive": {"url": image["url"], "sha256": image["sha256"]}},
            "config": {"args": ["/bin/sh", "-c", script]},
            "resources": {"cpuMillicores": 200, "memoryMiB": 32},
            "placement": {"mode": "EveryDPU"},
            **spec,
        },
    }
