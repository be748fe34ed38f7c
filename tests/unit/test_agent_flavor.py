"""The DPU agent applies a flavor to an (emulated) DPU OS root through the kernel's interfaces, keeps it
applied, and reports what waits for a boot, what cannot be applied, and the drift it undid."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpufleet.agent.flavor import FlavorConfig, FlavorReconciler
from dpufleet.api.agent_flavor import DesiredFlavor
from dpufleet.api.kinds import DPUFlavorSpec
from dpufleet.sim.devices import SimDPU
from dpufleet.sim.osroot import boot_kernel, materialise_dpu_root
from dpufleet.sim.profiles import get_profile

SPEC = {
    "kernelParameters": ["iommu.passthrough=1", "hugepagesz=2M"],
    "sysctl": {"net.ipv4.ip_forward": "1", "net.core.somaxconn": "8192"},
    "configFiles": [
        {"path": "/etc/dpufleet/ovs.conf", "content": "other_config:hw-offload=true\n", "mode": "0600"},
        {"path": "/etc/modules", "content": "vfio-pci\n", "operation": "append"},
    ],
    "hugepages": [{"pageSize": "2Mi", "count": 512}],
    "reservedResources": {"cpus": 2},
}


@pytest.fixture
def dpu(tmp_path: Path) -> SimDPU:
    return materialise_dpu_root(get_profile("nvidia-bluefield-3"), "MT2401X00001", 3, tmp_path / "root")


def reconciler(dpu: SimDPU, tmp_path: Path) -> FlavorReconciler:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    assert dpu.osroot is not None
    return FlavorReconciler(FlavorConfig(dpu.osroot, state), "https://unused", lambda: None)  # type: ignore[arg-type,return-value]


def desired(spec: dict[str, object] = SPEC, version: str = "7") -> DesiredFlavor:
    return DesiredFlavor(dpu="dpu-x", name="offload", resourceVersion=version, spec=DPUFlavorSpec.model_validate(spec))


def read(dpu: SimDPU, rel: str) -> str:
    assert dpu.osroot is not None
    return (dpu.osroot / rel).read_text()


def test_a_flavor_is_applied_through_the_kernels_interfaces_and_kernel_parameters_wait_for_a_boot(dpu, tmp_path):
    (dpu.osroot / "etc/modules").write_text("mlx5_core")  # type: ignore[operator]
    report = reconciler(dpu, tmp_path).converge(desired())
    assert report is not None and report.applied and report.problems == [] and report.repairs == []
    assert read(dpu, "proc/sys/net/ipv4/ip_forward") == "1\n"
    assert read(dpu, "proc/sys/net/core/somaxconn") == "8192\n"
    assert read(dpu, "etc/sysctl.d/90-dpufleet-flavor.conf") == "net.core.somaxconn = 8192\nnet.ipv4.ip_forward = 1\n"
    assert read(dpu, "etc/dpufleet/ovs.conf") == "other_config:hw-offload=true\n"
    assert (dpu.osroot / "etc/dpufleet/ovs.conf").stat().st_mode & 0o777 == 0o600  # type: ignore[operator]
    assert read(dpu, "etc/modules") == "mlx5_core\nvfio-pci\n"  # appended, the rest kept
    assert read(dpu, "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages") == "512\n"
    assert report.pendingReboot == ["iommu.passthrough=1", "hugepagesz=2M", "CPUAffinity=0-1"]

    boot_kernel(dpu)  # the DPU reboots: the bootloader and systemd read what the agent wrote; runtime values reset
    assert "iommu.passthrough=1 hugepagesz=2M" in read(dpu, "proc/cmdline")
    assert read(dpu, "proc/sys/net/ipv4/ip_forward") == "0\n"
    again = reconciler(dpu, tmp_path).converge(desired())  # a restarted agent, from its state dir
    assert again is not None and again.applied and again.pendingReboot == []
    assert read(dpu, "proc/sys/net/ipv4/ip_forward") == "1\n"
    assert again.repairs == []  # a boot's reset is not drift: the values are applied again


def test_drift_is_undone_and_reported_once_the_flavor_held(dpu, tmp_path):
    agent = reconciler(dpu, tmp_path)
    assert agent.converge(desired()) is not None
    assert agent.converge(desired()).repairs == []  # type: ignore[union-attr]
    (dpu.osroot / "proc/sys/net/core/somaxconn").write_text("128\n")  # type: ignore[operator]
    (dpu.osroot / "etc/dpufleet/ovs.conf").write_text("edited by hand\n")  # type: ignore[operator]
    report = agent.converge(desired())
    assert report is not None and report.applied
    assert {(r.item, r.found) for r in report.repairs} == {
        ("sysctl net.core.somaxconn", "128"),
        ("file /etc/dpufleet/ovs.conf", "edited by hand"),
    }
    assert read(dpu, "proc/sys/net/core/somaxconn") == "8192\n"
    assert read(dpu, "etc/dpufleet/ovs.conf") == "other_config:hw-offload=true\n"
    assert agent.converge(desired()).repairs == []  # type: ignore[union-attr]


def test_what_the_kernel_lacks_is_a_problem_named_and_the_rest_is_applied(dpu, tmp_path):
    spec = {
        "sysctl": {"net.no.such.key": "1", "vm.swappiness": "10"},
        "hugepages": [{"pageSize": "512Mi", "count": 2}],
        "configFiles": [{"path": "/etc/../../outside", "content": "x"}],
    }
    report = reconciler(dpu, tmp_path).converge(desired(spec))
    assert report is not None and not report.applied
    assert any("sysctl net.no.such.key: no such key on this kernel" in p for p in report.problems)
    assert any("hugepages 512Mi: this kernel offers no pages of that size" in p for p in report.problems)
    assert any("file /etc/../../outside: the path must stay inside" in p for p in report.problems)
    assert read(dpu, "proc/sys/vm/swappiness") == "10\n"
    assert not (tmp_path / "outside").exists()


def test_a_new_version_of_the_flavor_removes_the_files_the_old_one_owned(dpu, tmp_path):
    agent = reconciler(dpu, tmp_path)
    agent.converge(desired())
    report = agent.converge(desired({"sysctl": {"net.ipv4.ip_forward": "1"}}, version="8"))
    assert report is not None and report.applied and report.repairs == [] and report.pendingReboot == []
    assert not (dpu.osroot / "etc/dpufleet/ovs.conf").exists()  # type: ignore[operator]
    assert not (dpu.osroot / "etc/default/grub.d/90-dpufleet-flavor.cfg").exists()  # type: ignore[operator]
    assert read(dpu, "etc/sysctl.d/90-dpufleet-flavor.conf") == "net.ipv4.ip_forward = 1\n"


def test_no_flavor_changes_nothing(dpu, tmp_path):
    assert reconciler(dpu, tmp_path).converge(DesiredFlavor(dpu="dpu-x")) is None
    assert not (dpu.osroot / "etc/sysctl.d/90-dpufleet-flavor.conf").exists()  # type: ignore[operator]
