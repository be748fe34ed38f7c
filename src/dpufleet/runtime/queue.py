"""A work queue of object keys: de-duplicated, with per-key exponential backoff and jitter.

Like client-go's rate-limited queue: a key is never processed by two workers at
once; a key added while it is being processed is processed again afterwards;
failures back off exponentially per key; `add_after` schedules a later visit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections import deque
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
    """Workers wait on futures of their own and each key wakes one of them (an asyncio.Event would
    wake all 64 of a controller's idle workers for every key, 63 of them to sleep again); one timer
    brings delayed keys in when the earliest is due."""

    backoff: Backoff = field(default_factory=Backoff)
    _ready: deque[K] = field(default_factory=deque)
    _queued: set[K] = field(default_factory=set)
    _processing: set[K] = field(default_factory=set)
    _dirty: set[K] = field(default_factory=set)
    _failures: dict[K, int] = field(default_factory=dict)
    _delayed: list[tuple[float, int, K]] = field(default_factory=list)  # a heap; entries not in _pending are stale
    _pending: dict[K, tuple[float, int, float]] = field(default_factory=dict)  # key -> (due, seq, last added)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    _timer: asyncio.TimerHandle | None = None
    _timer_at: float | None = None
    _closed: bool = False

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def __len__(self) -> int:
        return len(self._ready) + len(self._pending)

    def _add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._ready.append(key)
        self._wake_one()

    async def add(self, key: K) -> None:
        """Queue a key now. A key already queued is not queued twice."""
        self._add(key)

    async def add_after(self, key: K, delay: float) -> None:
        """Queue a key after `delay` seconds. A key has at most one delayed visit: the earliest asked for
        (like client-go's delaying queue), so requeues and wakes never pile up into parallel chains."""
        if delay <= 0:
            self._add(key)
            return
        now = time.monotonic()
        due = now + delay
        pending = self._pending.get(key)
        if pending is not None and pending[0] <= due:
            self._pending[key] = (pending[0], pending[1], now)
            return
        seq = next(self._seq)
        self._pending[key] = (due, seq, now)
        heapq.heappush(self._delayed, (due, seq, key))
        self._arm()

    def supersede(self, key: K, since: float) -> None:
        """A visit that started at `since` (time.monotonic) has seen the key's state: drop its delayed visit
        if every request for it was made before then (the visit's own result asks for the next one)."""
        pending = self._pending.get(key)
        if pending is not None and pending[2] <= since:
            del self._pending[key]

    def _arm(self) -> None:
        """Set the timer for the earliest delayed key (if it is not set for it already)."""
        while self._delayed and self._stale(self._delayed[0]):
            heapq.heappop(self._delayed)
        if not self._delayed or self._closed:
            return
        due = self._delayed[0][0]
        if self._timer is not None and self._timer_at is not None and self._timer_at <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = due
        self._timer = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._promote_due()
        self._arm()

    def _stale(self, entry: tuple[float, int, K]) -> bool:
        pending = self._pending.get(entry[2])
        return pending is None or pending[1] != entry[1]

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            entry = heapq.heappop(self._delayed)
            if self._stale(entry):
                continue
            del self._pending[entry[2]]
            self._add(entry[2])

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

    async def get(self) -> K | None:
        """The next key to process, or None once closed. Call done(key) afterwards."""
        while True:
            self._promote_due()
            if self._closed:
                return None
            if self._ready:
                key = self._ready.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                return key
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and self._ready:
                    self._wake_one()  # this worker was woken for a key it will not take: pass it on
                raise

    async def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            await self.add(key)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
