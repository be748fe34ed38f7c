"""The rolling upgrade's rules (services/upgrade.py), step by step, with the clock and the reports given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from dpufleet.api.kinds import DPUServiceSpec, UpgradeStatus, UpgradeStrategy
from dpufleet.services.desired import held_spec, revisions, runs_template, template_of
from dpufleet.services.upgrade import Seen, Step, advance, expected_revision

OLD, NEW, NEWER = "aaaa.cfg1", "bbbb.cfg1", "cccc.cfg1"
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
DPUS = [f"dpu-{i}" for i in range(8)]
TEMPLATE_OLD = {"artifact": "old"}
TEMPLATE_NEW = {"artifact": "new"}


def strategy(**kw: object) -> UpgradeStrategy:
    return UpgradeStrategy.model_validate({"maxUnavailable": 2, "minReadySeconds": 5, **kw})


def running(revision: str, *, ready: bool = True, restarts: int = 0, phase: str = "Running") -> Seen:
    restart, _, config = revision.partition(".")
    return Seen(revision=restart, config_revision=config, phase=phase, ready=ready, restarts=restarts)


class Fleet:
    """Drives `advance` like the controller does, with runtimes that do what they are told."""

    def __init__(self, dpus: list[str], strat: UpgradeStrategy) -> None:
        self.dpus, self.strategy, self.now = list(dpus), strat, T0
        self.upgrade = advance(None, OLD, TEMPLATE_OLD, strat, self.dpus, {}, T0).upgrade
        self.seen: dict[str, Seen] = {d: running(OLD) for d in self.dpus}
        self.broken: set[str] = set()  # revisions whose instances crash
        self.events: list[tuple[str, str, str]] = []

    def step(self, target: str, template: dict[str, object] = TEMPLATE_NEW, waiting: str | None = None) -> Step:
        result = advance(self.upgrade, target, template, self.strategy, self.dpus, self.seen, self.now, waiting)
        self.upgrade = result.upgrade
        self.events += result.events
        for dpu in self.dpus:  # each DPU's runtime converges to what it is told
            want = expected_revision(self.upgrade, dpu)
            self.seen[dpu] = running(want, restarts=1) if want in self.broken else running(want)
        return result

    def tick(self, seconds: float = 6) -> None:
        self.now += timedelta(seconds=seconds)


def test_the_first_visit_is_complete_at_the_spec_and_nothing_rolls() -> None:
    step = advance(None, OLD, TEMPLATE_OLD, strategy(), DPUS, {}, T0)
    assert step.upgrade.phase == "Complete" and step.upgrade.currentRevision == OLD and not step.rolling
    assert step.upgrade.template == TEMPLATE_OLD and not step.events


def test_an_upgrade_moves_at_most_max_unavailable_at_a_time_and_completes() -> None:
    fleet = Fleet(DPUS, strategy(maxUnavailable=2))
    first = fleet.step(NEW)
    assert first.upgrade.phase == "Progressing" and sorted(first.upgrade.inFlight) == ["dpu-0", "dpu-1"]
    assert len(first.upgrade.held) == 6 and first.rolling
    assert [expected_revision(first.upgrade, d) for d in DPUS].count(NEW) == 2
    seen_in_flight = []
    for _ in range(20):
        fleet.tick()
        step = fleet.step(NEW)
        seen_in_flight.append(len(step.upgrade.inFlight))
        if step.upgrade.phase == "Complete":
            break
    assert fleet.upgrade.phase == "Complete" and fleet.upgrade.currentRevision == NEW
    assert fleet.upgrade.template == TEMPLATE_NEW and not fleet.upgrade.held
    assert max(seen_in_flight) <= 2
    assert [e[0] for e in fleet.events if e[0] == "Upgraded"] == ["Upgraded"]
    assert all(expected_revision(fleet.upgrade, d) == NEW for d in DPUS)


def test_an_instance_counts_only_after_min_ready_seconds() -> None:
    fleet = Fleet(DPUS[:2], strategy(maxUnavailable=1, minReadySeconds=10))
    fleet.step(NEW)
    fleet.tick(1)
    fleet.step(NEW)  # ready seen for the first time
    fleet.tick(5)
    assert "dpu-0" in fleet.step(NEW).upgrade.inFlight  # ready 5 s of 10
    fleet.tick(6)
    step = fleet.step(NEW)
    assert step.upgrade.updated == ["dpu-0"] and list(step.upgrade.inFlight) == ["dpu-1"]


def test_a_crash_at_the_new_revision_rolls_every_instance_back() -> None:
    fleet = Fleet(DPUS, strategy(maxUnavailable=2, maxFailures=1))
    fleet.broken.add(NEW)
    fleet.step(NEW)
    fleet.tick()
    step = fleet.step(NEW)
    assert step.upgrade.phase == "RolledBack" and step.upgrade.rolledBackRevision == NEW
    assert not step.rolling and sorted(step.upgrade.held) == DPUS
    assert all(expected_revision(step.upgrade, d) == OLD for d in DPUS)
    assert step.upgrade.failed and "restarted 1 time" in step.upgrade.failed[0].reason
    warning = [e for e in fleet.events if e[0] == "RolledBack"]
    assert warning and warning[0][2] == "Warning" and "back on revision" in warning[0][1]
    fleet.tick()
    assert fleet.step(NEW).upgrade.phase == "RolledBack"  # the same spec is not tried again


def test_without_auto_rollback_a_failure_halts_and_keeps_what_upgraded() -> None:
    fleet = Fleet(DPUS[:4], strategy(maxUnavailable=1, maxFailures=1, autoRollback=False, minReadySeconds=0))
    fleet.step(NEW)
    fleet.tick()
    fleet.step(NEW)  # dpu-0 done, dpu-1 in flight
    fleet.broken.add(NEW)
    fleet.seen["dpu-1"] = running(NEW, restarts=2)
    fleet.tick()
    step = fleet.step(NEW)
    assert step.upgrade.phase == "Halted" and step.upgrade.updated == ["dpu-0"]
    assert expected_revision(step.upgrade, "dpu-0") == NEW and expected_revision(step.upgrade, "dpu-1") == OLD


def test_an_instance_never_ready_fails_at_the_progress_deadline() -> None:
    fleet = Fleet(DPUS[:2], strategy(maxUnavailable=1, progressDeadlineSeconds=60))
    fleet.step(NEW)
    fleet.seen["dpu-0"] = running(NEW, ready=False)
    fleet.now += timedelta(seconds=30)
    step = advance(fleet.upgrade, NEW, TEMPLATE_NEW, fleet.strategy, fleet.dpus, fleet.seen, fleet.now)
    assert step.upgrade.phase == "Progressing"
    fleet.upgrade, fleet.now = step.upgrade, fleet.now + timedelta(seconds=31)
    step = advance(fleet.upgrade, NEW, TEMPLATE_NEW, fleet.strategy, fleet.dpus, fleet.seen, fleet.now)
    assert step.upgrade.phase == "RolledBack"
    assert "not ready 60s after its upgrade began (Running" in step.upgrade.failed[0].reason


def test_a_stale_report_of_the_old_revision_is_not_taken_for_the_new_one() -> None:
    fleet = Fleet(DPUS[:2], strategy(maxUnavailable=1, minReadySeconds=0))
    fleet.step(NEW)
    fleet.seen["dpu-0"] = running(OLD)  # the runtime has not converged yet
    step = advance(fleet.upgrade, NEW, TEMPLATE_NEW, fleet.strategy, fleet.dpus, fleet.seen, fleet.now)
    assert "dpu-0" in step.upgrade.inFlight and not step.upgrade.updated


def test_failures_below_the_threshold_go_back_and_the_upgrade_ends_halted() -> None:
    fleet = Fleet(DPUS[:4], strategy(maxUnavailable=4, maxFailures=2))
    fleet.step(NEW)
    for dpu in DPUS[:4]:
        fleet.seen[dpu] = running(NEW, restarts=1) if dpu == "dpu-2" else running(NEW)
    fleet.tick()
    step = advance(fleet.upgrade, NEW, TEMPLATE_NEW, fleet.strategy, fleet.dpus, fleet.seen, fleet.now)
    fleet.upgrade = step.upgrade
    fleet.tick()
    step = advance(fleet.upgrade, NEW, TEMPLATE_NEW, fleet.strategy, fleet.dpus, fleet.seen, fleet.now)
    assert step.upgrade.phase == "Halted" and [f.dpu for f in step.upgrade.failed] == ["dpu-2"]
    assert expected_revision(step.upgrade, "dpu-2") == OLD and "fix the spec" in (step.upgrade.message or "")


def test_undo_ends_the_upgrade_on_the_current_revision() -> None:
    fleet = Fleet(DPUS, strategy(maxUnavailable=2))
    fleet.step(NEW)
    fleet.tick()
    fleet.step(NEW)
    step = fleet.step(OLD, TEMPLATE_OLD)
    assert step.upgrade.phase == "Complete" and step.upgrade.currentRevision == OLD
    assert all(expected_revision(step.upgrade, d) == OLD for d in DPUS)
    assert any(e[0] == "UpgradeUndone" for e in step.events)


def test_undo_after_a_rollback_clears_it() -> None:
    fleet = Fleet(DPUS[:2], strategy(maxUnavailable=1))
    fleet.broken.add(NEW)
    fleet.step(NEW)
    fleet.tick()
    assert fleet.step(NEW).upgrade.phase == "RolledBack"
    step = fleet.step(OLD, TEMPLATE_OLD)
    assert step.upgrade.phase == "Complete" and step.upgrade.rolledBackRevision is None and not step.upgrade.failed


def test_a_new_revision_mid_upgrade_sends_the_moved_dpus_straight_to_it() -> None:
    fleet = Fleet(DPUS[:4], strategy(maxUnavailable=1, minReadySeconds=0))
    fleet.step(NEW)
    fleet.tick()
    fleet.step(NEW)  # dpu-0 updated, dpu-1 in flight
    step = fleet.step(NEWER, {"artifact": "newer"})
    assert step.upgrade.updateRevision == NEWER and step.upgrade.currentRevision == OLD
    assert sorted(step.upgrade.inFlight) == ["dpu-0", "dpu-1"] and step.upgrade.held == ["dpu-2", "dpu-3"]


def test_a_dependency_upgrading_holds_new_batches_back() -> None:
    fleet = Fleet(DPUS, strategy(maxUnavailable=2))
    step = fleet.step(NEW, waiting="storage")
    assert step.upgrade.phase == "Waiting" and not step.upgrade.inFlight and step.rolling
    assert "waiting for service 'storage'" in (step.upgrade.message or "")
    step = fleet.step(NEW)
    assert step.upgrade.phase == "Progressing" and len(step.upgrade.inFlight) == 2


def test_an_instance_placed_mid_upgrade_runs_the_new_revision_and_after_a_rollback_the_old() -> None:
    fleet = Fleet(DPUS[:2], strategy(maxUnavailable=1))
    fleet.step(NEW)
    fleet.dpus.append("dpu-new")
    step = fleet.step(NEW)
    assert "dpu-new" in step.upgrade.inFlight and expected_revision(step.upgrade, "dpu-new") == NEW
    rolled = Fleet(DPUS[:2], strategy(maxUnavailable=1))
    rolled.broken.add(NEW)
    rolled.step(NEW)
    rolled.tick()
    rolled.step(NEW)
    rolled.dpus.append("dpu-new")
    assert expected_revision(rolled.step(NEW).upgrade, "dpu-new") == OLD


def test_a_dpu_that_no_longer_holds_the_service_is_forgotten() -> None:
    fleet = Fleet(DPUS[:3], strategy(maxUnavailable=1))
    fleet.step(NEW)
    fleet.dpus.remove("dpu-0")
    step = fleet.step(NEW)
    assert "dpu-0" not in {*step.upgrade.held, *step.upgrade.inFlight, *step.upgrade.updated}


def test_percentages_round_down_and_never_below_one() -> None:
    fleet = Fleet(DPUS[:3], strategy(maxUnavailable="25%"))
    assert len(fleet.step(NEW).upgrade.inFlight) == 1
    fleet = Fleet(DPUS, strategy(maxUnavailable="50%"))
    assert len(fleet.step(NEW).upgrade.inFlight) == 4


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("maxUnavailable", 0, "at least 1"),
        ("maxFailures", "150%", "percentage"),
        ("minReadySeconds", -1, "greater than or equal"),
    ],
)
def test_a_bad_strategy_names_the_field(field: str, value: object, problem: str) -> None:
    with pytest.raises(ValidationError) as err:
        UpgradeStrategy.model_validate({field: value})
    assert field in str(err.value) and problem in str(err.value)


def test_a_held_dpu_runs_what_the_current_revision_ran() -> None:
    old = DPUServiceSpec.model_validate(
        {
            "artifact": {"ociArchive": {"url": "http://127.0.0.1/a.tar", "sha256": "a" * 64}},
            "config": {"args": ["/bin/sleep", "1"]},
            "placement": {"mode": "EveryDPU"},
        }
    )
    new = DPUServiceSpec.model_validate(
        {**old.model_dump(mode="json"), "artifact": {"bundle": {"url": "http://127.0.0.1/b.tar", "sha256": "b" * 64}}}
    )
    held = held_spec(new, template_of(old))
    assert revisions(held) == revisions(old) != revisions(new)
    assert held.placement == new.placement
    status = UpgradeStatus(currentRevision="x.y", updateRevision="z.w", held=["dpu-0"])
    assert expected_revision(status, "dpu-0") == "x.y" and expected_revision(status, "dpu-1") == "z.w"


def test_a_completed_upgrade_keeps_what_ran_before_for_undo() -> None:
    fleet = Fleet(DPUS[:2], strategy(maxUnavailable=2, minReadySeconds=0))
    fleet.step(NEW)
    fleet.tick()
    done = fleet.step(NEW).upgrade
    assert done.phase == "Complete" and done.previousRevision == OLD and done.previousTemplate == TEMPLATE_OLD


def test_a_spec_just_written_reaches_no_dpu_before_the_controller_has_seen_it() -> None:
    old = {"artifact": {"ociArchive": {"url": "http://127.0.0.1/a.tar", "sha256": "a" * 64}}}
    upgrade = advance(None, OLD, old, strategy(), DPUS, {}, T0).upgrade
    doc = {
        "spec": {"artifact": {"bundle": {"url": "http://127.0.0.1/b.tar", "sha256": "b" * 64}}},
        "status": {"upgrade": upgrade.model_dump(mode="json")},
    }
    assert runs_template(doc, "dpu-0") == old  # the controller has not visited since the spec changed
    moving = advance(upgrade, NEW, TEMPLATE_NEW, strategy(maxUnavailable=1), DPUS, {}, T0).upgrade
    doc["status"] = {"upgrade": moving.model_dump(mode="json")}
    assert runs_template(doc, "dpu-0") == TEMPLATE_NEW and runs_template(doc, "dpu-1") == old
    assert runs_template({"spec": {}, "status": {}}, "dpu-0") is None  # never visited: the spec


def test_a_paused_upgrade_starts_no_one_else_lets_those_in_flight_finish_and_goes_on_when_resumed() -> None:
    fleet = Fleet(DPUS, strategy(maxUnavailable=2))
    fleet.step(NEW)  # dpu-0 and dpu-1 in flight
    fleet.strategy = strategy(maxUnavailable=2, paused=True)
    paused = fleet.step(NEW)
    assert paused.upgrade.phase == "Paused" and sorted(paused.upgrade.inFlight) == ["dpu-0", "dpu-1"]
    assert paused.rolling  # two still in flight: look again
    assert [e[0] for e in paused.events] == ["UpgradePaused"]
    for _ in range(5):
        fleet.tick()
        fleet.step(NEW)
    assert fleet.upgrade.phase == "Paused" and sorted(fleet.upgrade.updated) == ["dpu-0", "dpu-1"]
    assert not fleet.upgrade.inFlight and len(fleet.upgrade.held) == 6
    assert not fleet.step(NEW).rolling  # nothing in flight: wait for the spec to change
    assert [expected_revision(fleet.upgrade, d) for d in DPUS].count(NEW) == 2  # no one else moved
    assert [e[0] for e in fleet.events].count("UpgradePaused") == 1  # one Event, not one per visit

    fleet.strategy = strategy(maxUnavailable=2)
    resumed = fleet.step(NEW)
    assert resumed.upgrade.phase == "Progressing" and len(resumed.upgrade.inFlight) == 2
    for _ in range(20):
        fleet.tick()
        if fleet.step(NEW).upgrade.phase == "Complete":
            break
    assert fleet.upgrade.phase == "Complete" and fleet.upgrade.currentRevision == NEW


def test_a_paused_upgrade_still_counts_failures_and_rolls_back() -> None:
    fleet = Fleet(DPUS, strategy(maxUnavailable=2, maxFailures=1))
    fleet.broken.add(NEW)
    fleet.step(NEW)
    fleet.strategy = strategy(maxUnavailable=2, maxFailures=1, paused=True)
    fleet.tick()
    step = fleet.step(NEW)
    assert step.upgrade.phase == "RolledBack"
    assert all(expected_revision(fleet.upgrade, d) == OLD for d in DPUS)


def test_pausing_changes_no_revision() -> None:
    base = {"artifact": {"image": {"reference": "repo/x@sha256:" + "a" * 64}}, "placement": {"mode": "EveryDPU"}}
    running_spec = DPUServiceSpec.model_validate(base)
    paused_spec = DPUServiceSpec.model_validate({**base, "upgrade": {"paused": True}})
    assert revisions(running_spec) == revisions(paused_spec)
