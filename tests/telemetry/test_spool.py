"""The spool's trimming policy, on real files: old metrics are downsampled before anything is dropped, logs and
events are never thinned, a class never makes room by touching a higher-priority one, and every sample
trimmed is counted by reason and class."""

from __future__ import annotations

from pathlib import Path

from dpufleet.agent.telemetry.spool import Spool
from dpufleet.api.telemetry import TelemetryClass

LOAD, LOGS, USAGE, EVENTS = TelemetryClass.LOAD, TelemetryClass.LOGS, TelemetryClass.USAGE, TelemetryClass.EVENTS


def _fill(spool: Spool, cls: TelemetryClass, seqs: range, samples: int = 5, size: int = 100) -> None:
    for seq in seqs:
        spool.add(seq, cls, samples, b"x" * size)


def test_old_metrics_are_downsampled_before_any_batch_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1000)
    _fill(spool, LOAD, range(10))  # full
    _fill(spool, LOAD, range(10, 11))
    kept = [e.seq for e in spool.oldest(100)]
    # every other batch of the older half went: the old part keeps half its resolution, the new part all of it
    assert kept == [0, 2, 4, 5, 6, 7, 8, 9, 10]
    assert spool.dropped == {("downsampled", LOAD): 10}
    assert spool.size <= 1000 and not list(tmp_path.glob("000000000001.*"))
    # it goes on: each round thins the older half again; no whole batch is dropped while thinning can make room
    _fill(spool, LOAD, range(11, 30))
    assert ("buffer-full", LOAD) not in spool.dropped
    produced = 30 * 5
    assert produced == spool.buffered()[LOAD] + spool.dropped[("downsampled", LOAD)]
    seqs = [e.seq for e in spool.oldest(100)]
    assert seqs == sorted(seqs) and seqs[-1] == 29 and seqs[0] == 0


def test_logs_and_events_are_never_thinned_and_a_class_never_trims_a_higher_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1000)
    _fill(spool, EVENTS, range(5))
    _fill(spool, USAGE, range(5, 10))  # full: events and usage
    _fill(spool, LOGS, range(10, 11))  # logs rank below usage and events: it may touch neither
    assert spool.dropped == {("buffer-full", LOGS): 5}
    _fill(spool, EVENTS, range(11, 13))  # events may: usage is thinned first (its older half), then dropped
    assert spool.dropped[("downsampled", USAGE)] > 0
    assert spool.buffered()[EVENTS] == 7 * 5 and ("downsampled", EVENTS) not in spool.dropped
    total = sum(spool.buffered().values()) + sum(spool.dropped.values())
    assert total == 13 * 5  # every sample buffered or counted


def test_a_spool_reopened_after_a_restart_keeps_what_downsampling_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1000)
    _fill(spool, LOAD, range(11))
    before = [e.seq for e in spool.oldest(100)]
    again = Spool(tmp_path, 1000)
    assert [e.seq for e in again.oldest(100)] == before and again.size == spool.size
