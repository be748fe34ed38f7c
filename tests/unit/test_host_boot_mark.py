"""What marks a host's boot on its Redfish BMC: BootProgress.LastStateTime, else LastResetTime, else nothing."""

from __future__ import annotations

from dpufleet.drivers.redfish.hostbmc import _boot_mark


def test_boot_progress_time_comes_first():
    system = {"BootProgress": {"LastStateTime": "2026-12-05T10:00:01+00:00"}, "LastResetTime": "2026-12-05T09:00:00Z"}
    assert _boot_mark(system) == 1_796_464_801_000


def test_last_reset_time_marks_a_boot_where_boot_progress_is_missing():
    earlier, later = (
        _boot_mark({"LastResetTime": "2026-12-05T09:00:00Z"}),
        _boot_mark({"LastResetTime": "2026-12-05T09:00:05Z"}),
    )
    assert earlier is not None and later is not None and later - earlier == 5000


def test_no_mark_or_an_unreadable_one_is_none_not_zero():
    assert _boot_mark({}) is None
    assert _boot_mark({"BootProgress": {"LastState": "OSRunning"}, "LastResetTime": "yesterday"}) is None
