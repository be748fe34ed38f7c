"""A work queue of object keys: de-duplicated, with per-key exponential backoff and jitter.

Like client-go's rate-limited queue: a key is never processed by two workers at
once; a key added while it is being processed is processed again afterwards;
failures back off exponentially per key; `add_after` schedules a later visit.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class Backoff:
    base: float = 0.05
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, failures: int) -> float:
        raw = min(self.cap, self.base * (2 ** max(0, failures - 1)))
        return raw * (1 + random.uniform(-self.jitter, self.jitter))


@dataclass
class WorkQueue(Generic[K]):
    backoff: Backoff = field(default_factory=Backoff)
    _ready: list[K] = field(default_factory=list)
    _queued: set[K] = field(default_factory=set)
    _processing: set[K] = field(default_factory=set)
    _dirty: set[K] = field(default_factory=set)
    _failures: dict[K, int] = field(default_factory=dict)
    _delayed: list[tuple[float, int, K]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _wake: asyncio.Event | None = None
    _closed: bool = False

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def _notify(self) -> None:
        self._event().set()

    def __len__(self) -> int:
        return len(self._ready) + len(self._delayed)

    async def add(self, key: K) -> None:
        """Queue a key now. A key already queued is not queued twice."""
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._ready.append(key)
        self._notify()

    async def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            await self.add(key)
            return
        heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))
        self._notify()

    async def add_rate_limited(self, key: K) -> float:
        """Re-queue a key after a failure, backing off per key. Returns the delay chosen."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = self.backoff.delay(failures)
        await self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its backoff starts over."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def _promote_due(self) -> float | None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            await self.add(key)
        return self._delayed[0][0] - now if self._delayed else None

    async def get(self) -> K | None:
        """The next key to process, or None once closed. Call done(key) afterwards."""
        wake = self._event()
        while True:
            wait = await self._promote_due()
            if self._closed:
                return None
            if self._ready:
                key = self._ready.pop(0)
                self._queued.discard(key)
                self._processing.add(key)
                if self._ready:
                    wake.set()  # more work: let another worker in
                return key
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(wait, 1.0) if wait is not None else 1.0)

    async def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            await self.add(key)

    async def close(self) -> None:
        self._closed = True
        self._notify()
