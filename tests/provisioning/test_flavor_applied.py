"""A DPU's flavor is applied for real on its OS by its agent (over mTLS), reported back, and kept: kernel
parameters wait for a reboot and take effect with it, sysctls and hugepages are applied at once and again
after the boot, and drift is undone and shows as a FlavorDrift Event on the DPU."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from dpufleet.main import app
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from support.server import RunningServer

from .conftest import Operator, condition, discover, image_doc, upload

pytestmark = pytest.mark.timeout(120)

PAYLOAD = b"emulated DPU OS image with a flavor\n" * 500
FLAVOR = {
    "kernelParameters": ["iommu.passthrough=1"],
    "sysctl": {"net.ipv4.ip_forward": "1", "net.core.somaxconn": "8192"},
    "configFiles": [{"path": "/etc/dpufleet/offload.conf", "content": "hw-offload=true\n", "mode": "0600"}],
    "hugepages": [{"pageSize": "2Mi", "count": 256}],
    "reservedResources": {"cpus": 2},
}


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = SimOptions(
        hosts=1, dpus_per_host=1, seed=23, directory=tmp_path_factory.mktemp("fleet"), time_scale=0.005,
        server=api.url, token=api.token, register=False, heartbeat_seconds=1.0, flavor_seconds=0.2,
    )  # fmt: skip
    with sim_in_thread(options) as running:
        yield running


def flavor_state(op: Operator, name: str) -> Any:
    return lambda: (op.get("dpus", name) or {}).get("status", {}).get("flavorState") or {}


def test_a_flavor_is_applied_on_the_dpus_os_survives_a_reboot_and_drift_is_undone(
    api: RunningServer, http, fleet: SimRunning
) -> None:
    op = Operator(http, "default")
    [name] = discover(op, fleet)
    root = fleet.fleet.dpus[0].osroot
    assert root is not None
    assert upload(http, PAYLOAD).status_code == 201
    op.create("images", image_doc("os-flavored", "os-9.1", PAYLOAD))
    op.create("dpuflavors", {"kind": "DPUFlavor", "metadata": {"name": "offload"}, "spec": FLAVOR})
    op.patch("dpus", name, {"spec": {"image": "os-flavored", "flavor": "offload"}})
    op.wait_object("dpus", name, lambda d: d["status"].get("phase") == "Ready", timeout=60)

    state = op.wait_for("the agent's flavor report", flavor_state(op, name), lambda s: s.get("applied"), timeout=30)
    assert state["name"] == "offload" and state["problems"] == []
    assert state["pendingReboot"] == ["iommu.passthrough=1", "CPUAffinity=0-1"]
    assert condition(op.get("dpus", name) or {}, "FlavorApplied")["reason"] == "PendingReboot"
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "1\n"
    assert (root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "256\n"
    assert (root / "etc/dpufleet/offload.conf").read_text() == "hw-offload=true\n"
    assert "iommu.passthrough=1" not in (root / "proc/cmdline").read_text()
    shown = CliRunner().invoke(app, ["--server", api.url, "--token", api.token, "describe", "dpu", name])
    assert shown.exit_code == 0, shown.output
    assert "Flavor:" in shown.output and "offload" in shown.output and "holds" in shown.output
    assert "Next boot:      iommu.passthrough=1" in shown.output

    action = {"kind": "PowerAction", "metadata": {"name": "reboot-for-flavor"},
              "spec": {"target": {"kind": "DPU", "name": name}, "mode": "dpu-only"}}  # fmt: skip
    op.create("poweractions", action)
    op.wait_object("poweractions", "reboot-for-flavor", lambda a: (a.get("status") or {}).get("phase") == "Succeeded",
                   timeout=30)  # fmt: skip
    state = op.wait_for("the flavor after the reboot", flavor_state(op, name),
                        lambda s: s.get("applied") and s.get("pendingReboot") == [], timeout=30)  # fmt: skip
    assert "iommu.passthrough=1" in (root / "proc/cmdline").read_text()
    assert "Cpus_allowed_list:\t0-1" in (root / "proc/1/status").read_text()
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "1\n"  # applied again after the boot reset it
    assert condition(op.get("dpus", name) or {}, "FlavorApplied")["reason"] == "Applied"
    assert not [e for e in op.events("DPU", name) if e.get("reason") == "FlavorDrift"]  # a boot is not drift

    (root / "proc/sys/net/core/somaxconn").write_text("128\n")  # someone on the DPU changes it by hand
    drift = op.wait_for("a FlavorDrift event", lambda: [e for e in op.events("DPU", name) if e.get("reason") == "FlavorDrift"],
                        lambda found: bool(found), timeout=30)  # fmt: skip
    assert "sysctl net.core.somaxconn: found 128" in drift[0]["message"]
    assert (root / "proc/sys/net/core/somaxconn").read_text() == "8192\n"
