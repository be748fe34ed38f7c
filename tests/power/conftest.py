"""A control plane with a fast PowerAction controller, and an emulated fleet discovered through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from dpufleet import plane as manager
from dpufleet.fleet.power import PowerActionReconciler
from dpufleet.inventory.bmc import BMCReconciler
from dpufleet.inventory.discovery import DiscoveryReconciler
from dpufleet.runtime.reaper import EventReaper
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from support.net import poll
from support.server import BASE, RunningServer, threaded_server


def fast_power(services: manager.Services) -> PowerActionReconciler:
    return manager.wire(PowerActionReconciler, services, poll_seconds=0.05)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with pytest.MonkeyPatch.context() as mp:
        # only what resets need: no provisioning or health remediation acting on the same DPUs
        mp.setattr(manager, "DEFAULT_RECONCILERS", [EventReaper, DiscoveryReconciler, BMCReconciler, fast_power])
        with threaded_server(tmp_path_factory.mktemp("api")) as running:
            yield running


@pytest.fixture(scope="module")
def http(api: RunningServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = SimOptions(
        hosts=3,
        dpus_per_host=2,
        profiles=["nvidia-bluefield-3"],
        seed=77,
        directory=tmp_path_factory.mktemp("fleet"),
        time_scale=0.005,  # a 40 s DPU boot takes 0.2 s, a 90 s host reboot 0.45 s
        server=api.url,
        token=api.token,
        register=False,
        agents=False,
    )
    with sim_in_thread(options) as running:
        yield running


def path(plural: str, name: str | None = None, project: str = "default") -> str:
    base = f"{BASE}/projects/{project}/{plural}"
    return f"{base}/{name}" if name else base


def create(http: httpx.Client, plural: str, doc: dict[str, Any], project: str = "default") -> httpx.Response:
    return http.post(path(plural, project=project), json=doc)


def get(http: httpx.Client, plural: str, name: str, project: str = "default") -> dict[str, Any]:
    resp = http.get(path(plural, name, project))
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()
    return found


def wait_for(what: str, fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 20.0) -> Any:
    return poll(what, fetch, done, timeout, show=lambda value: repr(value)[:4000])


@pytest.fixture(scope="module")
def site(http: httpx.Client, fleet: SimRunning) -> SimRunning:
    """The fleet discovered; one Host object per emulated host, driven through its emulated host BMC."""
    cred = {"username": fleet.username, "password": fleet.password}
    assert create(http, "credentials", {"kind": "Credential", "metadata": {"name": "bmcs"}, "spec": cred}).is_success
    disc = {"endpoints": fleet.endpoints, "credentialsRef": "bmcs", "schemes": ["http"], "probeTimeoutSeconds": 2.0}
    assert create(http, "discoveries", {"kind": "Discovery", "metadata": {"name": "lab"}, "spec": disc}).is_success
    names = {f"dpu-{d.serial.lower()}" for d in fleet.fleet.dpus}

    def listed() -> set[str]:
        items = http.get(path("dpus")).json()["items"]
        return {d["metadata"]["name"] for d in items if (d.get("status") or {}).get("bmc")}

    wait_for("every DPU discovered", listed, lambda seen: seen >= names, timeout=30)
    for host in fleet.fleet.hosts:  # each host through its own emulated BMC, over Redfish
        bmc = {"address": fleet.host_bmcs[host.id], "credentialsRef": "bmcs"}
        bmc_doc = {"kind": "BMC", "metadata": {"name": f"{host.id}-bmc"}, "spec": bmc}
        assert create(http, "bmcs", bmc_doc).is_success
        spec = {"bmcRef": f"{host.id}-bmc"}
        assert create(http, "hosts", {"kind": "Host", "metadata": {"name": host.id}, "spec": spec}).is_success
        for dpu in host.dpus:
            patch = {"spec": {"hostRef": host.id}}
            resp = http.patch(
                path("dpus", f"dpu-{dpu.serial.lower()}"),
                json=patch,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert resp.status_code == 200, resp.text
    return fleet
