"""The store-and-forward buffer: a bounded on-disk spool of batches, forwarded oldest first.

Each batch is one file in the spool directory, named ``<seq>.<class>.<samples>``, so the spool survives an
agent restart and its content can be counted without reading it. When adding a batch would pass the byte
cap, the spool makes room by policy, never touching a class of higher priority than the incoming batch's
(``DROP_ORDER``: load first, events last):

1. **downsample** the old metrics first: a metric class (not logs or events) holding at least
   ``DOWNSAMPLE_MIN`` batches loses every other batch of its older half (one batch is one collection, so
   the old part of the buffer keeps half the time resolution; each further round halves it again). For a
   counter (CPU time, bytes) nothing of the total is lost: the next value kept includes what was dropped;
2. then **drop** whole batches, the oldest batch of the lowest-priority class present first.

Every sample trimmed is counted by reason (``downsampled``, ``buffer-full``) and class.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from ...api.telemetry import DROP_ORDER, TelemetryClass

DOWNSAMPLE_MIN = 4  # a class with fewer batches buffered is not thinned (its older half would be one batch)
NOT_DOWNSAMPLED = frozenset({TelemetryClass.LOGS, TelemetryClass.EVENTS})  # every line and event counts


@dataclass(frozen=True)
class Spooled:
    seq: int
    cls: TelemetryClass
    samples: int
    size: int
    path: Path


class Spool:
    def __init__(self, directory: Path, cap_bytes: int) -> None:
        if cap_bytes <= 0:
            raise ValueError(f"telemetry buffer cap: must be positive, not {cap_bytes}")
        self.directory = directory
        self.cap_bytes = cap_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._by_class: dict[TelemetryClass, deque[Spooled]] = {c: deque() for c in TelemetryClass}
        self.size = 0
        self.dropped: Counter[tuple[str, TelemetryClass]] = Counter()  # (reason, class) -> samples
        self.recovered: list[Spooled] = self._load()

    def _load(self) -> list[Spooled]:
        found: list[Spooled] = []
        for path in self.directory.iterdir():
            if path.name.startswith("."):  # the plugins' own state (a log's offsets), not a batch
                continue
            seq, _, rest = path.name.partition(".")
            cls, _, samples = rest.partition(".")
            try:
                entry = Spooled(int(seq), TelemetryClass(cls), int(samples), path.stat().st_size, path)
            except (ValueError, OSError):
                path.unlink(missing_ok=True)  # a half-written file of a crash: never forwarded
                continue
            found.append(entry)
        for entry in sorted(found, key=lambda e: e.seq):
            self._by_class[entry.cls].append(entry)
            self.size += entry.size
        return found

    def next_seq(self) -> int:
        return max((q[-1].seq for q in self._by_class.values() if q), default=-1) + 1

    def add(self, seq: int, cls: TelemetryClass, samples: int, data: bytes) -> None:
        """Keep one batch; trims lower-priority batches (or refuses this one) to stay under the cap."""
        if len(data) > self.cap_bytes or not self._make_room(len(data), cls):
            self.dropped[("buffer-full", cls)] += samples
            return
        path = self.directory / f"{seq:012d}.{cls.value}.{samples}"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._by_class[cls].append(Spooled(seq, cls, samples, len(data), path))
        self.size += len(data)

    def _make_room(self, need: int, incoming: TelemetryClass) -> bool:
        """Downsample, then drop oldest batches of the lowest-priority classes, never touching a class of higher
        priority than ``incoming``."""
        rank = DROP_ORDER.index(incoming)
        while self.size + need > self.cap_bytes:
            if self._downsample(DROP_ORDER[: rank + 1]):
                continue
            victim_class = next((c for c in DROP_ORDER[: rank + 1] if self._by_class[c]), None)
            if victim_class is None:
                return False
            victim = self._by_class[victim_class].popleft()
            self._remove(victim)
            self.dropped[("buffer-full", victim_class)] += victim.samples
        return True

    def _downsample(self, classes: tuple[TelemetryClass, ...]) -> bool:
        """Every other batch of the older half of the lowest-priority metric class that has enough; False if none."""
        for cls in classes:
            queue = self._by_class[cls]
            if cls in NOT_DOWNSAMPLED or len(queue) < DOWNSAMPLE_MIN:
                continue
            half = len(queue) // 2
            kept: deque[Spooled] = deque()
            for index, entry in enumerate(queue):
                if index < half and index % 2 == 1:
                    self._remove(entry)
                    self.dropped[("downsampled", cls)] += entry.samples
                else:
                    kept.append(entry)
            self._by_class[cls] = kept
            return True
        return False

    def _remove(self, entry: Spooled) -> None:
        entry.path.unlink(missing_ok=True)
        self.size -= entry.size

    def oldest(self, limit: int) -> list[Spooled]:
        """Up to ``limit`` batches in the order they were produced."""
        heads = sorted((e for q in self._by_class.values() for e in q), key=lambda e: e.seq)
        return heads[:limit]

    def read(self, entry: Spooled) -> bytes:
        return entry.path.read_bytes()

    def forwarded(self, entries: list[Spooled]) -> None:
        for entry in entries:
            queue = self._by_class[entry.cls]
            if entry in queue:
                queue.remove(entry)
                self._remove(entry)

    def buffered(self) -> dict[TelemetryClass, int]:
        return {c: sum(e.samples for e in q) for c, q in self._by_class.items() if q}
