"""Given a discovered emulated fleet of 8 DPUs on 4 hosts whose BMCs fail some installs (the sim's
fail_updates hook), when a DPUSet rolls an image out, then a failure threshold halts the rollout naming
the failed DPUs and a failed canary stops it, and in both cases no further DPU is touched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from dpufleet.api.kinds import FAILED_PHASES
from dpufleet.sim.runner import SimRunning

from .conftest import Operator, image_doc, upload

pytestmark = pytest.mark.timeout(120)

MERGE = {"Content-Type": "application/merge-patch+json"}
PAYLOAD = b"emulated DOCA 2.13 BFB payload\n" * 500
VERSION = "DOCA_2.13.0_BSP_4.13.0_Ubuntu_22.04-1.1"
IMAGE = "doca-2-13"


def name_of(serial: str) -> str:
    return f"dpu-{serial.lower()}"


@pytest.fixture(scope="module")
def image(site: Operator) -> str:
    assert upload(site.http, PAYLOAD).status_code == 201
    site.create("images", image_doc(IMAGE, VERSION, PAYLOAD))
    return IMAGE


@pytest.fixture()
def healthy_bmcs(fleet: SimRunning) -> Iterator[None]:
    yield
    for bmc in fleet.fleet.bmcs.values():
        bmc.fail_updates = False


def group(op: Operator, fleet: SimRunning, label: str, hosts: set[str]) -> list[str]:
    """Label the DPUs of `hosts` with group=<label> and declare their host; return their names in rollout order."""
    names = []
    for dpu in fleet.fleet.dpus:
        if dpu.host_id not in hosts:
            continue
        name = name_of(dpu.serial)
        resp = op.http.patch(
            op.path("dpus", name),
            json={"metadata": {"labels": {"group": label}}, "spec": {"hostRef": dpu.host_id}},
            headers=MERGE,
        )
        assert resp.status_code == 200, resp.text
        names.append(name)
    return sorted(names)


def bmc_of(fleet: SimRunning, name: str) -> Any:
    for bmc in fleet.fleet.bmcs.values():
        if name_of(bmc.dpu.serial) == name:
            return bmc
    raise AssertionError(f"no BMC for {name}")


def dpuset(name: str, label: str, strategy: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "DPUSet",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"group": label}}, "template": {"image": IMAGE}, "strategy": strategy},
    }


def hosts(fleet: SimRunning) -> list[str]:
    return sorted({d.host_id for d in fleet.fleet.dpus})


def assert_untouched(op: Operator, fleet: SimRunning, names: list[str]) -> None:
    for name in names:
        dpu = op.get("dpus", name)
        assert dpu is not None
        assert dpu["spec"].get("image") != IMAGE, f"{name} was updated after the rollout halted"
        assert bmc_of(fleet, name).dpu.firmware["DPU_OS"] != VERSION


def test_a_failure_threshold_halts_the_rollout(
    site: Operator, fleet: SimRunning, image: str, healthy_bmcs: None
) -> None:
    names = group(site, fleet, "threshold", set(hosts(fleet)[:2]))
    assert len(names) == 4
    for name in names:  # every install fails: whichever DPUs the controller starts first fail
        bmc_of(fleet, name).fail_updates = True
    # Up to two DPUs start at once (maxUnavailable 2, no per-host cap); the first failure halts the set. (The
    # controller goes in name order but skips a DPU whose write conflicts and takes it on the next pass, so
    # which DPUs start, and whether the second starts before the first fails, is not fixed.)
    site.create(
        "dpusets",
        dpuset("threshold", "threshold", {"maxUnavailable": 2, "maxUnavailablePerHost": None, "maxFailures": 1}),
    )

    def started() -> list[str]:
        return sorted(n for n in names if (site.get("dpus", n) or {})["spec"].get("image") == IMAGE)

    def settled(s: dict[str, Any]) -> bool:  # halted, and every DPU it started has failed and been counted
        failing = started()
        return (
            s["status"].get("phase") == "Halted"
            and 1 <= len(failing) <= 2
            and s["status"].get("failed") == len(failing)
            and sorted(s["status"].get("failedDPUs") or []) == failing
        )

    halted = site.wait_object("dpusets", "threshold", settled, timeout=60)
    status = halted["status"]
    failing = started()
    rest = [n for n in names if n not in failing]
    assert len(rest) >= 2
    rolled_out = next(c for c in status["conditions"] if c["type"] == "RolledOut")
    assert rolled_out["status"] == "False" and rolled_out["reason"] == "FailureThreshold"
    for name in failing:
        assert name in rolled_out["message"]
    assert "the limit is 1" in rolled_out["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    for name in failing:
        dpu = site.get("dpus", name)
        assert dpu is not None and dpu["status"]["phase"] in FAILED_PHASES
    time.sleep(1.5)  # several controller passes: still nothing else is touched
    assert_untouched(site, fleet, rest)
    assert site.get("dpusets", "threshold")["status"]["phase"] == "Halted"  # type: ignore[index]
    halts = [e for e in site.events("DPUSet", "threshold") if e.get("reason") == "Halted"]
    assert len(halts) == 1 and halts[0]["type"] == "Warning"
    assert site.http.delete(site.path("dpusets", "threshold")).status_code == 200


def test_a_failed_canary_stops_the_rollout(site: Operator, fleet: SimRunning, image: str, healthy_bmcs: None) -> None:
    names = group(site, fleet, "canary", set(hosts(fleet)[2:]))
    assert len(names) == 4
    for name in names:  # whichever DPU is the canary, its install fails
        bmc_of(fleet, name).fail_updates = True
    site.create("dpusets", dpuset("canary", "canary", {"type": "Canary", "canary": 1, "maxUnavailable": 2}))
    halted = site.wait_object("dpusets", "canary", lambda s: s["status"].get("phase") == "Halted", timeout=60)
    canary = [n for n in names if (site.get("dpus", n) or {})["spec"].get("image") == IMAGE]
    rest = [n for n in names if n not in canary]
    assert len(canary) == 1 and halted["status"]["failedDPUs"] == canary
    assert halted["status"]["updated"] == 1
    time.sleep(1.5)
    assert_untouched(site, fleet, rest)
    # Promoting a failed canary does not resume the rollout: the failure still counts (maxFailures defaults to 1
    # for a canary only, so RollingUpdate without maxFailures would go on; the operator sets it explicitly).
    resp = site.http.patch(
        site.path("dpusets", "canary"),
        json={"spec": {"strategy": {"type": "RollingUpdate", "maxFailures": 1}}},
        headers=MERGE,
    )
    assert resp.status_code == 200, resp.text
    time.sleep(1.5)
    assert site.get("dpusets", "canary")["status"]["phase"] == "Halted"  # type: ignore[index]
    assert_untouched(site, fleet, rest)
