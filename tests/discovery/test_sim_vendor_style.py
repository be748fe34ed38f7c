"""The emulator serves a BMC in a real firmware's style, quirks included, and discovery copes.

Given an emulated BlueField-3 whose BMC speaks as BF-23.10 firmware does (profile
nvidia-bluefield-3-bf2310: its Arm system "Physical" with no identity of its own, the card's
identity on a padded Card chassis, zero processor and memory summaries), when an operator
discovers it, then it is a DPU named by its trimmed serial, recognised by its card chassis, with
the catalog's figures rather than the zeros.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from support.server import RunningServer

from .conftest import Operator, condition, is_true

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = SimOptions(
        hosts=1,
        dpus_per_host=1,
        profiles=["nvidia-bluefield-3-bf2310"],
        seed=16,
        directory=tmp_path_factory.mktemp("fleet"),
        time_scale=0.01,
        server=api.url,
        token=api.token,
        register=False,
        agents=False,  # only what the BMC says
    )
    with sim_in_thread(options) as running:
        yield running


def test_a_bf2310_style_bmc_yields_a_dpu_recognised_by_its_card_chassis(http: httpx.Client, fleet: SimRunning) -> None:
    op = Operator(http, "default")
    op.credential("bf-bmcs", fleet.username, fleet.password)
    op.discovery("bf2310", endpoints=fleet.endpoints, credentialsRef="bf-bmcs", intervalSeconds=600)
    [card] = fleet.fleet.dpus
    obj = op.wait_object("dpus", f"dpu-{card.serial.lower()}", lambda d: bool(d["status"].get("recognition")))
    status = obj["status"]
    assert (status["serialNumber"], status["partNumber"], status["vendor"]) == (
        card.serial,
        card.profile.part_number,
        card.profile.vendor,
    )
    recognition = status["recognition"]
    assert (recognition["rule"], recognition["model"]) == ("card-chassis", "nvidia-bluefield-3")
    assert "MemorySummary.TotalSystemMemoryGiB=0" in recognition["unknown"]
    assert status["capabilities"]["cpu"]["cores"] == card.profile.cpu.cores  # the catalog's, not the zero
    assert {f["id"] for f in status["firmware"]} == {fw.id for fw in card.profile.firmware}
    assert is_true(obj, "Inventoried") and is_true(obj, "ModelKnown")
    bmc = op.wait_object("bmcs", obj["status"]["bmc"], lambda b: condition(b, "Ready") is not None)
    assert bmc["status"]["serialNumbers"] == [card.serial]
