"""The logs plugin: the DPU's system log and its services' logs, line by line, each with a severity.

Sources: ``/var/log/syslog`` (or ``/var/log/messages``) under the agent's root, and each service's log in the
service runtime's log directory (``<services state dir>/logs/<service>.log``). A line is read once: the read
offset of each file is kept in the plugin's state (``.logs-offsets.json`` beside the spool), with the file's
inode, so an agent restart goes on where it stopped and a rotated file (renamed to ``.1`` by logrotate) is read
to its end before the new one is read from its start. A file seen before any offset was kept starts at its
end, as ``tail -F`` does: a first start does not replay a year of log. A line not yet ended is left for the next
collection; at most ``MAX_LINES`` lines are taken per file per collection (the rest wait, nothing is skipped).

Line formats: RFC 5424 (``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG``), RFC 3164 (``<PRI>Mmm dd hh:mm:ss
HOST TAG: MSG``) and the files rsyslog writes, which carry no PRI (Debian's ``TIMESTAMP HOST TAG: MSG`` with an
RFC 3339 or a traditional timestamp). With a PRI the severity is the PRI's; without one it is read from the
message's words (``panic``, ``error``, ``warning``...), and is ``info`` when none says otherwise. A line's
own timestamp is kept when it has one.

Sender-side verbosity: a line below the minimum severity the control plane set for its source (``syslog`` or
the service's name, else the DPU's default) is not produced at all.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ...api.telemetry import Sample, TelemetryAssignment, TelemetryClass, severity_rank
from .base import Sources, TelemetryPlugin

log = logging.getLogger(__name__)
LOGS = TelemetryClass.LOGS
MAX_LINES = 1000  # per file per collection
MAX_BODY = 4096  # a longer line is cut (and says so)
MAX_READ = 4 * 1024 * 1024  # bytes read from one file per collection
SYSLOG_FILES = ("var/log/syslog", "var/log/messages")
OFFSETS = ".logs-offsets.json"

# PRI severity (RFC 5424 section 6.2.1): 0 emerg, 1 alert, 2 crit, 3 err, 4 warning, 5 notice, 6 info, 7 debug
PRI_SEVERITY = ("critical", "critical", "critical", "error", "warning", "info", "info", "debug")
_RFC5424 = re.compile(r"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[.*?\])+) ?(.*)", re.S)
_PRI = re.compile(r"<(\d{1,3})>(.*)", re.S)
_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) (\S+) (.*)", re.S)
_BSD = re.compile(r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d) (\S+) (.*)", re.S)
_TAG = re.compile(r"([^\s:\[]+)(?:\[(\d+)\])?: ?(.*)", re.S)
_MONTHS = {
    m: i + 1 for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"))
}
_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("critical", re.compile(r"\b(panic|fatal|emerg(ency)?|crit(ical)?|oops|bug:|call trace)", re.I)),
    ("error", re.compile(r"\b(err(or)?s?|fail(ed|ure|s)?|timed? ?out|segfault|denied)\b", re.I)),
    ("warning", re.compile(r"\b(warn(ing)?s?|degraded|deprecated)\b", re.I)),
    ("debug", re.compile(r"\bdebug\b", re.I)),
)


@dataclass
class Line:
    """One parsed log line: severity, the app that wrote it, its own time (Unix ns) if it had one, the text."""

    severity: str
    app: str | None
    time: int | None
    message: str
    host: str | None = None
    pid: str | None = None


def _iso_ns(text: str) -> int | None:
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1_000_000) * 1000


def _bsd_ns(month: str, day: str, hh: str, mm: str, ss: str, now_ns: int) -> int | None:
    """A traditional timestamp has no year and no zone: this year (last year if that would be in the
    future by more than a day), taken as UTC."""
    now = datetime.fromtimestamp(now_ns / 1e9, UTC)
    try:
        stamp = datetime(now.year, _MONTHS[month], int(day), int(hh), int(mm), int(ss), tzinfo=UTC)
        if (stamp - now).total_seconds() > 86400:
            stamp = stamp.replace(year=now.year - 1)
    except (KeyError, ValueError):
        return None
    return int(stamp.timestamp()) * 1_000_000_000


def severity_from_words(message: str) -> str:
    for severity, pattern in _WORDS:
        if pattern.search(message):
            return severity
    return "info"


def _tagged(rest: str) -> tuple[str | None, str | None, str]:
    found = _TAG.match(rest)
    if found is None:
        return None, None, rest
    return found.group(1), found.group(2), found.group(3)


def parse_line(text: str, now_ns: int) -> Line:
    """One line of a system log in any of the formats above; never raises (an unknown shape is kept whole)."""
    text = text.rstrip("\r\n")
    severity: str | None = None
    found = _RFC5424.match(text)
    if found is not None:
        pri = int(found.group(1))
        nil = lambda v: None if v == "-" else v  # noqa: E731
        message = found.group(8).removeprefix("\ufeff")
        return Line(
            PRI_SEVERITY[pri & 7] if pri <= 191 else severity_from_words(message), nil(found.group(4)),
            _iso_ns(found.group(2)) if found.group(2) != "-" else None, message, nil(found.group(3)),
            nil(found.group(5)),
        )  # fmt: skip
    pri_match = _PRI.match(text)
    if pri_match is not None and int(pri_match.group(1)) <= 191:
        severity = PRI_SEVERITY[int(pri_match.group(1)) & 7]
        text = pri_match.group(2)
    stamp: int | None = None
    host: str | None = None
    rest = text
    iso = _ISO.match(text)
    bsd = _BSD.match(text) if iso is None else None
    if iso is not None:
        stamp, host, rest = _iso_ns(iso.group(1)), iso.group(2), iso.group(3)
    elif bsd is not None:
        month, day, hh, mm, ss = bsd.group(1, 2, 3, 4, 5)
        stamp, host, rest = _bsd_ns(month, day, hh, mm, ss, now_ns), bsd.group(6), bsd.group(7)
    if stamp is None and host is None:
        return Line(severity or severity_from_words(text), None, None, text)
    app, pid, message = _tagged(rest)
    return Line(severity or severity_from_words(message), app, stamp, message, host, pid)


@dataclass
class _Offset:
    inode: int
    offset: int


class LogsPlugin(TelemetryPlugin):
    name = "logs"
    classes = frozenset({LOGS})

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self._path = sources.state / OFFSETS
        self._offsets, self._fresh = self._load()
        self.min_severity: dict[str, str] = {}  # source ("syslog", a service, "*") -> the least severity sent

    def configure(self, assignment: TelemetryAssignment) -> None:
        self.min_severity = dict(assignment.logSeverity)

    def _load(self) -> tuple[dict[str, _Offset], bool]:
        try:
            raw = json.loads(self._path.read_text())
            return {k: _Offset(int(v["inode"]), int(v["offset"])) for k, v in raw.items()}, False
        except FileNotFoundError:
            return {}, True
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("telemetry logs: %s unreadable, reading every log from its end", self._path)
            return {}, True

    def _save(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps({k: {"inode": v.inode, "offset": v.offset} for k, v in self._offsets.items()}))
        os.replace(tmp, self._path)

    def _files(self) -> Iterator[tuple[str, str, Path]]:
        """(source, key, path) for every log this plugin reads."""
        for rel in SYSLOG_FILES:
            path = self.root / rel
            if path.exists():
                yield "syslog", rel, path
                break
        logs = self.sources.service_logs
        if logs is not None and logs.is_dir():
            for path in sorted(logs.glob("*.log")):
                yield path.stem, f"service:{path.stem}", path

    def collect(self, enabled: frozenset[TelemetryClass], at: int) -> Iterable[tuple[TelemetryClass, Sample]]:
        if LOGS not in enabled:
            return []
        out: list[tuple[TelemetryClass, Sample]] = []
        seen: set[str] = set()
        for source, key, path in self._files():
            seen.add(key)
            least = severity_rank(self.min_severity.get(source) or self.min_severity.get("*") or "debug")
            for line in self._read(key, path, at):
                if severity_rank(line.severity) < least:
                    continue  # not asked for: not produced
                out.append((LOGS, self._sample(source, path, line, at)))
        for gone in set(self._offsets) - seen:
            del self._offsets[gone]
        self._fresh = False
        self._save()
        return out

    def _sample(self, source: str, path: Path, line: Line, at: int) -> Sample:
        body = line.message if len(line.message) <= MAX_BODY else line.message[: MAX_BODY - 12] + " [truncated]"
        attributes = {"log.file.name": path.name, "log.source": source}
        if source != "syslog":
            attributes["service.name"] = source
        if line.app:
            attributes["syslog.app_name"] = line.app
        if line.pid:
            attributes["process.pid"] = line.pid
        if line.host:
            attributes["host.name"] = line.host
        return Sample(
            name="dpufleet.log.syslog" if source == "syslog" else "dpufleet.log.service", time=line.time or at,
            severity=line.severity, body=body, attributes=attributes,
        )  # fmt: skip

    def _read(self, key: str, path: Path, at: int) -> list[Line]:
        try:
            st = path.stat()
        except OSError:
            return []
        known = self._offsets.get(key)
        if known is None:
            # a file first seen on the very first collection starts at its end; one that appears later from its start
            known = self._offsets[key] = _Offset(st.st_ino, st.st_size if self._fresh else 0)
        lines: list[Line] = []
        if known.inode != st.st_ino:
            rotated = path.with_name(path.name + ".1")  # logrotate's rename: finish the old file first
            try:
                if rotated.stat().st_ino == known.inode:
                    lines, ended = self._take(rotated, known, at, MAX_LINES, final=True)
                    if not ended:
                        return lines
            except OSError:
                pass
            known.inode, known.offset = st.st_ino, 0
        elif st.st_size < known.offset:  # truncated in place (copytruncate)
            known.offset = 0
        more, _ = self._take(path, known, at, MAX_LINES - len(lines))
        return lines + more

    def _take(self, path: Path, known: _Offset, at: int, limit: int, final: bool = False) -> tuple[list[Line], bool]:
        """Up to ``limit`` whole lines from the file's offset, which moves past them; True when the file was read
        to its end. ``final``: the file is written no more (rotated away), so a last line without an end counts."""
        try:
            with path.open("rb") as f:
                f.seek(known.offset)
                chunk = f.read(MAX_READ)
        except OSError:
            return [], True
        lines: list[Line] = []
        consumed = 0
        for raw in chunk.splitlines(keepends=True):
            if len(lines) >= limit:
                break
            if not raw.endswith(b"\n") and not final and not (consumed == 0 and len(chunk) >= MAX_READ):
                break  # a line still being written (a line longer than a whole read is taken, cut)
            consumed += len(raw)
            text = raw.decode("utf-8", errors="replace")
            if text.strip():
                lines.append(parse_line(text, at))
        known.offset += consumed
        return lines, consumed == len(chunk) and len(chunk) < MAX_READ
