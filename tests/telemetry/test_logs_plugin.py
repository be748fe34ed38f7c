"""The logs plugin on its own: the line formats real systems write (the RFCs' own examples and Debian's rsyslog
files), each line read once across collections and restarts, rotation and truncation, lines still being
written, the bound per collection, and the control plane's severity floor per source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpufleet.agent.telemetry.base import Sources
from dpufleet.agent.telemetry.logs_plugin import MAX_LINES, LogsPlugin, parse_line
from dpufleet.api.telemetry import Sample, TelemetryAssignment, TelemetryClass, parse_log_severity

NOW = 1_796_551_200_000_000_000  # 2026-12-06T10:00:00Z
LOGS = frozenset({TelemetryClass.LOGS})


# --- formats --------------------------------------------------------------------------------------------------


def test_rfc5424_examples_keep_their_severity_app_host_and_time() -> None:
    # RFC 5424 section 6.5, examples 1 and 2 (facility 4 severity 2; facility 20 severity 5)
    one = parse_line(
        "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \ufeff'su root' failed for lonvick on /dev/pts/8",
        NOW,
    )
    assert (one.severity, one.app, one.host, one.pid) == ("critical", "su", "mymachine.example.com", None)
    assert one.message == "'su root' failed for lonvick on /dev/pts/8"
    assert one.time == 1_065_910_455_003_000_000
    two = parse_line(
        "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.", NOW
    )
    assert (two.severity, two.app, two.pid) == ("info", "myproc", "8710")  # notice counts as info
    assert two.time == 1_061_727_255_000_003_000


def test_rfc3164_example_and_a_pri_of_every_severity() -> None:
    # RFC 3164 section 5.4, example 1: no year in the timestamp, so this year's
    line = parse_line("<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8", NOW)
    assert (line.severity, line.app, line.host) == ("critical", "su", "mymachine")
    assert line.time == 1_791_756_855_000_000_000  # 2026-10-11T22:14:15Z
    expected = ["critical", "critical", "critical", "error", "warning", "info", "info", "debug"]
    assert [parse_line(f"<{8 + s}>Dec  6 10:00:00 h app: quiet words", NOW).severity for s in range(8)] == expected


def test_a_traditional_timestamp_later_than_now_is_last_years() -> None:
    line = parse_line("Dec 31 23:59:59 h cron[1]: ran", NOW)
    assert line.time == 1_767_225_599_000_000_000  # 2025-12-31T23:59:59Z


@pytest.mark.parametrize(
    ("text", "severity"),
    [
        ("2026-12-06T10:00:00.123456+00:00 dpu1 kernel: Kernel panic - not syncing: Fatal exception", "critical"),
        ("2026-12-06T10:00:00.123456+00:00 dpu1 kernel: watchdog: BUG: soft lockup - CPU#0 stuck for 23s!", "critical"),
        ("2026-12-06T10:00:00+01:00 dpu1 systemd[1]: ovs-vswitchd.service: Failed with result 'exit-code'.", "error"),
        ("Dec  6 10:00:00 dpu1 kernel: EXT4-fs warning (device nvme0n1p2): mount count reached", "warning"),
        ("Dec  6 10:00:00 dpu1 sshd[123]: Accepted publickey for root from 198.51.100.7", "info"),
    ],
)
def test_rsyslog_files_carry_no_pri_and_the_words_give_the_severity(text: str, severity: str) -> None:
    assert parse_line(text, NOW).severity == severity


def test_an_rsyslog_file_line_keeps_its_own_time_host_app_and_pid() -> None:
    line = parse_line("2026-12-06T09:59:58.250000+00:00 dpu-mt1 ovs-vswitchd[811]: bridge br0: added interface p0", NOW)
    assert (line.time, line.host, line.app, line.pid) == (1_796_551_198_250_000_000, "dpu-mt1", "ovs-vswitchd", "811")
    assert line.message == "bridge br0: added interface p0"


def test_a_line_of_no_known_shape_is_kept_whole() -> None:
    line = parse_line("\x00\xff half a line of nothing", NOW)
    assert (line.time, line.app, line.message) == (None, None, "\x00\xff half a line of nothing")


# --- reading files ---------------------------------------------------------------------------------------------


class Dpu:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.state = tmp / "state"
        self.services = tmp / "services-logs"
        for d in (self.root / "var/log", self.state, self.services):
            d.mkdir(parents=True, exist_ok=True)
        self.syslog = self.root / "var/log/syslog"

    def plugin(self) -> LogsPlugin:
        return LogsPlugin(Sources(self.root, self.state, self.services))

    def write(self, path: Path, *lines: str, end: str = "\n") -> None:
        with path.open("a") as f:
            f.write("".join(line + end for line in lines))


def _bodies(samples: list[tuple[TelemetryClass, Sample]]) -> list[str]:
    assert all(cls is TelemetryClass.LOGS for cls, _ in samples)
    return [s.body or "" for _, s in samples]


def test_a_first_start_skips_the_old_log_and_then_reads_each_new_line_once(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    dpu.write(dpu.syslog, "Dec  6 09:00:00 d app: from before the agent")
    plugin = dpu.plugin()
    assert _bodies(list(plugin.collect(LOGS, NOW))) == []
    dpu.write(dpu.syslog, "Dec  6 10:00:01 d app: one", "Dec  6 10:00:02 d app: two")
    assert _bodies(list(plugin.collect(LOGS, NOW))) == ["one", "two"]
    assert _bodies(list(plugin.collect(LOGS, NOW))) == []
    # a restarted agent goes on where it stopped: nothing twice, nothing lost
    dpu.write(dpu.syslog, "Dec  6 10:00:03 d app: three")
    assert _bodies(list(dpu.plugin().collect(LOGS, NOW))) == ["three"]


def test_a_service_log_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    plugin = dpu.plugin()
    list(plugin.collect(LOGS, NOW))
    dpu.write(dpu.services / "flow-logger.log", "starting", "ERROR: cannot open /dev/hugepages")
    got = list(plugin.collect(LOGS, NOW))
    assert _bodies(got) == ["starting", "ERROR: cannot open /dev/hugepages"]
    first, second = (s for _, s in got)
    assert first.name == "dpufleet.log.service" and first.attributes["service.name"] == "flow-logger"
    assert (first.severity, second.severity) == ("info", "error")
    assert first.time == NOW  # a line with no time of its own takes the collection's


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    plugin = dpu.plugin()
    list(plugin.collect(LOGS, NOW))
    dpu.write(dpu.syslog, "Dec  6 10:00:01 d app: whole")
    dpu.write(dpu.syslog, "Dec  6 10:00:02 d app: hal", end="")
    assert _bodies(list(plugin.collect(LOGS, NOW))) == ["whole"]
    dpu.write(dpu.syslog, "f of a line")
    assert _bodies(list(plugin.collect(LOGS, NOW))) == ["half of a line"]


def test_a_rotated_log_is_read_to_its_end_before_the_new_one(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    plugin = dpu.plugin()
    list(plugin.collect(LOGS, NOW))
    dpu.write(dpu.syslog, "Dec  6 10:00:01 d app: before rotation")
    assert _bodies(list(plugin.collect(LOGS, NOW))) == ["before rotation"]
    dpu.write(dpu.syslog, "Dec  6 10:00:02 d app: written just before the rename")
    os.rename(dpu.syslog, dpu.syslog.with_name("syslog.1"))  # logrotate
    dpu.write(dpu.syslog, "Dec  6 10:00:03 d app: first of the new file")
    assert _bodies(list(plugin.collect(LOGS, NOW))) == ["written just before the rename", "first of the new file"]


def test_a_log_truncated_in_place_is_read_again_from_its_start(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    plugin = dpu.plugin()
    list(plugin.collect(LOGS, NOW))
    dpu.write(dpu.syslog, "Dec  6 10:00:01 d app: a long line before copytruncate")
    list(plugin.collect(LOGS, NOW))
    dpu.syslog.write_text("")  # copytruncate
    dpu.write(dpu.syslog, "Dec  6 10:00:02 d app: new")
    assert _bodies(list(plugin.collect(LOGS, NOW))) == ["new"]


def test_a_flood_is_taken_in_bounded_collections_and_nothing_is_skipped(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    plugin = dpu.plugin()
    list(plugin.collect(LOGS, NOW))
    dpu.write(dpu.syslog, *(f"Dec  6 10:00:00 d app: line {i}" for i in range(MAX_LINES * 2 + 5)))
    batches = [_bodies(list(plugin.collect(LOGS, NOW))) for _ in range(4)]
    assert [len(b) for b in batches] == [MAX_LINES, MAX_LINES, 5, 0]
    assert [line for b in batches for line in b] == [f"line {i}" for i in range(MAX_LINES * 2 + 5)]


def test_a_line_longer_than_a_sample_body_is_cut_and_says_so(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    plugin = dpu.plugin()
    list(plugin.collect(LOGS, NOW))
    dpu.write(dpu.syslog, "Dec  6 10:00:00 d app: " + "x" * 10_000)
    (body,) = _bodies(list(plugin.collect(LOGS, NOW)))
    assert len(body) == 4096 and body.endswith(" [truncated]")


def test_the_severity_floor_is_applied_on_the_dpu_per_source(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    plugin = dpu.plugin()
    plugin.configure(TelemetryAssignment(logSeverity=parse_log_severity("warning,flow-logger=debug")))
    list(plugin.collect(LOGS, NOW))
    dpu.write(dpu.syslog, "Dec  6 10:00:00 d app: all is well", "Dec  6 10:00:01 d kernel: link failed")
    dpu.write(dpu.services / "flow-logger.log", "debug: flow 7 aged out")
    got = list(plugin.collect(LOGS, NOW))
    assert sorted(_bodies(got)) == ["debug: flow 7 aged out", "link failed"]


def test_a_bad_severity_floor_names_the_entry() -> None:
    with pytest.raises(ValueError, match=r"'syslog=loud': 'loud' is not one of debug, info"):
        parse_log_severity("syslog=loud")
    assert parse_log_severity("error, syslog=debug") == {"*": "error", "syslog": "debug"}


def test_an_unreadable_offsets_file_starts_over_from_each_logs_end(tmp_path: Path) -> None:
    dpu = Dpu(tmp_path)
    dpu.write(dpu.syslog, "Dec  6 10:00:00 d app: old")
    (dpu.state / ".logs-offsets.json").write_text("{not json")
    plugin = dpu.plugin()
    assert _bodies(list(plugin.collect(LOGS, NOW))) == []
    dpu.write(dpu.syslog, "Dec  6 10:00:01 d app: new")
    assert _bodies(list(plugin.collect(LOGS, NOW))) == ["new"]
