"""A DPUSet's counts kept between passes: only changed DPUs are classified again, and DPUs that
leave the set stop counting."""

from __future__ import annotations

from typing import Any

from dpufleet.fleet.dpuset import _Tally

TEMPLATE = [("image", "os-2")]


def row(name: str, image: str, phase: str, installed: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "project": "default", "labels": {}},
        "spec": {"image": image},
        "status": {"phase": phase, "installedImage": installed},
    }


def test_a_changed_dpu_is_counted_again_and_an_unchanged_one_as_it_was() -> None:
    tally = _Tally(TEMPLATE, "os-2")
    a, b = row("a", "os-1", "Ready", "os-1"), row("b", "os-2", "Installing")
    tally.count([a, b])
    assert tally.updated == {"b"} and tally.converged == set() and set(tally.busy) == {"b"}

    b2 = row("b", "os-2", "Ready", "os-2")  # the mirror puts a new row in place on a change
    tally.count([a, b2])
    assert tally.updated == {"b"} and tally.converged == {"b"} and tally.busy == {}

    b3 = row("b", "os-2", "InstallFailed", "os-2")
    tally.count([a, b3])
    assert tally.failed == {"b"} and tally.converged == set() and set(tally.busy) == {"b"}


def test_dpus_that_leave_the_set_stop_counting() -> None:
    tally = _Tally(TEMPLATE, "os-2")
    a, b, c = row("a", "os-2", "InstallFailed"), row("b", "os-2", "Ready", "os-2"), row("c", "os-1", "Installing")
    tally.count([a, b, c])
    assert tally.failed == {"a"} and tally.converged == {"b"} and set(tally.busy) == {"a", "c"}
    tally.count([b])
    assert tally.failed == set() and tally.updated == {"b"} and tally.busy == {} and set(tally.rows) == {"b"}
