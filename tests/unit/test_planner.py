"""The update planner: steps in an order that holds, resets merged, impossible requests explained."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpufleet.api.kinds import ImageComponent
from dpufleet.lifecycle.planner import StepAction, Unsatisfiable, compare, plan_update

SHA = "a" * 64


def comp(name: str, version: str, impact: str = "dpu-reset", **extra: Any) -> ImageComponent:
    type_ = {"BMC_Firmware": "bmc-firmware", "DPU_NIC": "nic-firmware", "DPU_UEFI": "uefi"}.get(name, "os")
    return ImageComponent.model_validate(
        {"name": name, "type": type_, "version": version, "sha256": SHA, "impact": impact, **extra}
    )


INSTALLED = {"BMC_Firmware": "BF-24.04-5", "DPU_UEFI": "4.7.0", "DPU_NIC": "32.39.2048", "DPU_OS": "2.7.0"}


def test_versions_compare_as_people_read_them() -> None:
    assert compare("32.43.1014", "32.44.1000") < 0
    assert compare("32.100.1", "32.99.9") > 0
    assert compare("BF-24.10-17", "BF-24.10-20") < 0
    assert compare("2.9.0", "2.9.0") == 0


def test_dependencies_order_the_steps_and_one_reboot_serves_several_components() -> None:
    """OS 2.9 requires NIC firmware >= 32.41; BMC firmware goes before UEFI."""
    plan = plan_update(
        INSTALLED,
        [
            comp("DPU_OS", "2.9.0", requires=[{"component": "DPU_NIC", "minVersion": "32.41"}]),
            comp("DPU_UEFI", "4.9.1", after=["BMC_Firmware"]),
            comp("DPU_NIC", "32.43.1014"),
            comp("BMC_Firmware", "BF-24.10-17", impact="live"),
        ],
    )
    order = [s.component for s in plan.installs]
    assert order.index("BMC_Firmware") < order.index("DPU_UEFI")
    assert order.index("DPU_NIC") < order.index("DPU_OS")
    # the OS needs the new NIC firmware *running*: a reboot between them, and one at the end
    step_of = {s.component: i for i, s in enumerate(plan.steps) if s.component}
    between = plan.steps[step_of["DPU_NIC"] : step_of["DPU_OS"]]
    assert any(s.action == StepAction.REBOOT_DPU for s in between)
    assert plan.steps[-1].action == StepAction.REBOOT_DPU
    assert plan.dpu_reboots == 2
    assert plan.host_resets == 0


def test_independent_disruptive_components_share_one_reboot() -> None:
    plan = plan_update(INSTALLED, [comp("DPU_NIC", "32.43.1014"), comp("DPU_UEFI", "4.9.1")])
    assert [s.action for s in plan.steps] == [StepAction.INSTALL, StepAction.INSTALL, StepAction.REBOOT_DPU]


def test_a_live_update_resets_nothing_and_unchanged_components_are_skipped() -> None:
    plan = plan_update(INSTALLED, [comp("BMC_Firmware", "BF-24.10-17", impact="live"), comp("DPU_OS", "2.7.0")])
    assert [s.action for s in plan.steps] == [StepAction.INSTALL]
    assert plan.dpu_reboots == 0 and plan.host_resets == 0
    assert plan.unchanged == ["DPU_OS"]


def test_a_host_reset_component_makes_the_reset_a_host_reset() -> None:
    plan = plan_update(INSTALLED, [comp("DPU_NIC", "32.43.1014", impact="host-reset"), comp("DPU_UEFI", "4.9.1")])
    assert plan.host_resets == 1 and plan.dpu_reboots == 0


def test_an_impossible_request_is_refused_with_every_reason_in_plain_words() -> None:
    with pytest.raises(Unsatisfiable) as info:
        plan_update(
            INSTALLED,
            [
                comp("DPU_OS", "2.9.0", requires=[{"component": "DPU_NIC", "minVersion": "32.41"}]),
                comp("DPU_UEFI", "4.9.1", conflicts=[{"component": "BMC_Firmware", "maxVersion": "BF-24.06"}]),
            ],
        )
    reasons = info.value.reasons
    assert any("DPU_OS 2.9.0 requires DPU_NIC >= 32.41, but the DPU has DPU_NIC 32.39.2048" in r for r in reasons)
    assert any("DPU_UEFI 4.9.1 conflicts with BMC_Firmware <= BF-24.06" in r for r in reasons)


def test_a_cycle_is_explained() -> None:
    with pytest.raises(Unsatisfiable, match="cycle among DPU_NIC, DPU_UEFI"):
        plan_update(
            INSTALLED, [comp("DPU_NIC", "32.43", after=["DPU_UEFI"]), comp("DPU_UEFI", "4.9", after=["DPU_NIC"])]
        )


@given(st.permutations(["A", "B", "C", "D", "E"]), st.data())
def test_every_plan_respects_every_declared_order(names: list[str], data: st.DataObject) -> None:
    """Property: whatever acyclic 'after' edges are declared, each component comes after its predecessors."""
    rank = {n: i for i, n in enumerate(names)}
    components = []
    for n in names:
        befores = data.draw(st.lists(st.sampled_from([m for m in names if rank[m] < rank[n]] or ["_"]), unique=True))
        befores = [b for b in befores if b != "_"]
        components.append(comp(n, "2.0", impact=data.draw(st.sampled_from(["live", "dpu-reset"])), after=befores))
    plan = plan_update({n: "1.0" for n in names}, components)
    position = {s.component: i for i, s in enumerate(plan.steps) if s.component}
    for c in components:
        for b in c.after:
            assert position[b] < position[c.name]
    assert {s.component for s in plan.installs} == set(names)


def test_maintenance_windows_include_overnight_ranges() -> None:
    from datetime import UTC, datetime

    from dpufleet.fleet.dpuset import in_window

    saturday_night = [{"days": ["sat"], "start": "22:00", "end": "04:00"}]
    assert in_window(saturday_night, datetime(2026, 11, 28, 23, 30, tzinfo=UTC))  # Sat 23:30
    assert in_window(saturday_night, datetime(2026, 11, 29, 3, 59, tzinfo=UTC))  # Sun 03:59, same window
    assert not in_window(saturday_night, datetime(2026, 11, 29, 4, 0, tzinfo=UTC))
    assert not in_window(saturday_night, datetime(2026, 11, 27, 23, 0, tzinfo=UTC))  # a Friday
    office = [{"start": "09:00", "end": "17:00"}]
    assert in_window(office, datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    assert not in_window(office, datetime(2026, 11, 23, 17, 0, tzinfo=UTC))
