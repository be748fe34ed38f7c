"""Conditions: one per step, and a Ready summary a user can read without logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dpufleet.api.meta import Severity
from dpufleet.runtime import conditions
from dpufleet.runtime.conditions import READY, get_condition, set_condition, summarize_ready


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def tick(self) -> None:
        self.t += timedelta(seconds=1)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(conditions, "now", c)
    return c


def test_last_transition_time_changes_only_when_status_flips(clock: Clock) -> None:
    status: dict[str, Any] = {}
    assert set_condition(status, "Reachable", False, "Timeout", "no answer")
    first = get_condition(status, "Reachable")
    assert first is not None
    t0 = first["lastTransitionTime"]

    clock.tick()
    assert set_condition(status, "Reachable", False, "Refused", "connection refused")  # reason changes, status doesn't
    cond = get_condition(status, "Reachable")
    assert cond is not None and cond["reason"] == "Refused" and cond["lastTransitionTime"] == t0

    clock.tick()
    assert set_condition(status, "Reachable", True, "Answered")
    cond = get_condition(status, "Reachable")
    assert cond is not None and cond["lastTransitionTime"] != t0
    assert len(status["conditions"]) == 1


def test_setting_the_same_condition_again_changes_nothing(clock: Clock) -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Reachable", True, "Answered")
    before = [dict(c) for c in status["conditions"]]
    clock.tick()
    assert set_condition(status, "Reachable", True, "Answered") is False
    assert status["conditions"] == before


def test_true_conditions_carry_no_severity_and_false_ones_default_to_warning(clock: Clock) -> None:
    status: dict[str, Any] = {}
    set_condition(status, "A", True, "Ok", severity=Severity.ERROR)
    set_condition(status, "B", False, "Bad")
    a, b = get_condition(status, "A"), get_condition(status, "B")
    assert a is not None and "severity" not in a
    assert b is not None and b["severity"] == "Warning"


def test_ready_carries_the_reason_of_the_most_severe_failing_step(clock: Clock) -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Reachable", True, "Answered")
    set_condition(status, "Inventoried", False, "SlowInventory", "took 40s", severity=Severity.WARNING)
    set_condition(status, "FirmwareCurrent", False, "FlashFailed", "checksum mismatch", severity=Severity.ERROR)
    set_condition(status, "Tuned", False, "Skipped", severity=Severity.INFO)
    summarize_ready(status, ["Reachable", "Inventoried", "FirmwareCurrent", "Tuned"], generation=3)
    ready = get_condition(status, READY)
    assert ready is not None
    assert (ready["status"], ready["reason"], ready["severity"]) == ("False", "FlashFailed", "Error")
    assert "FirmwareCurrent" in ready["message"] and "checksum mismatch" in ready["message"]
    assert ready["observedGeneration"] == 3


def test_a_failure_outranks_a_pending_step(clock: Clock) -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Inventoried", False, "NoInventory", severity=Severity.INFO)
    summarize_ready(status, ["Reachable", "Inventoried"])
    ready = get_condition(status, READY)
    assert ready is not None and ready["reason"] == "NoInventory"


def test_ready_is_unknown_while_a_step_is_pending(clock: Clock) -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Reachable", True, "Answered")
    summarize_ready(status, ["Reachable", "Inventoried"])
    ready = get_condition(status, READY)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("Unknown", "InventoriedPending")


def test_ready_is_true_when_every_step_is_true(clock: Clock) -> None:
    status: dict[str, Any] = {}
    for step in ("Reachable", "Inventoried"):
        set_condition(status, step, True, "Done")
    assert summarize_ready(status, ["Reachable", "Inventoried"])
    ready = get_condition(status, READY)
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "AllStepsSucceeded")
    assert summarize_ready(status, ["Reachable", "Inventoried"]) is False  # recomputing changes nothing


def test_ready_transition_time_survives_a_change_of_failing_reason(clock: Clock) -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Reachable", False, "Timeout")
    summarize_ready(status, ["Reachable"])
    ready = get_condition(status, READY)
    assert ready is not None
    since = ready["lastTransitionTime"]
    clock.tick()
    set_condition(status, "Reachable", False, "Refused")
    summarize_ready(status, ["Reachable"])
    ready = get_condition(status, READY)
    assert ready is not None and ready["reason"] == "Refused" and ready["lastTransitionTime"] == since
    clock.tick()
    set_condition(status, "Reachable", True, "Answered")
    summarize_ready(status, ["Reachable"])
    ready = get_condition(status, READY)
    assert ready is not None and ready["status"] == "True" and ready["lastTransitionTime"] != since
