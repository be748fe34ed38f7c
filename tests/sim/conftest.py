"""Emulated fleets served over real HTTP on 127.0.0.1, shared per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dpufleet.sim.fleet import Fleet, FleetServer, build_fleet, fleet_in_thread

PASSWORD = "s1m-Bmc-Passw0rd"
USER = "fleetadmin"


def make_fleet(directory: Path, hosts: int = 2, dpus_per_host: int = 2) -> Fleet:
    return build_fleet(
        hosts,
        dpus_per_host,
        ["nvidia-bluefield-3", "intel-ipu-e2100"],
        seed=1234,
        directory=directory,
        username=USER,
        password_for=lambda _bmc_id: PASSWORD,
        time_scale=0.005,  # a 40 s boot takes 0.2 s
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    """A 2x2 fleet behind one port, each BMC under /bmc/<id>."""
    with fleet_in_thread(make_fleet(tmp_path_factory.mktemp("fleet"))) as running:
        yield running


@pytest.fixture(scope="module")
def served_per_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    """A 1x2 fleet with one port per BMC, each serving /redfish/v1."""
    fleet = make_fleet(tmp_path_factory.mktemp("fleet-ports"), hosts=1)
    with fleet_in_thread(fleet, per_bmc_ports=True) as running:
        yield running
