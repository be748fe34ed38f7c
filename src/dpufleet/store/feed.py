"""The change feed: one reader of the change log fanning out to every watcher.

A single task reads new changes from the store (woken at once by writes in this
process, and polling for writes by other processes such as a separate
`dpufleet controller`), then hands each change to the queues of the watchers of
that kind. A watcher that falls too far behind is cut off; it reconnects with its
last resourceVersion and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .store import Change, Store

log = logging.getLogger(__name__)


class WatcherTooSlow(Exception):
    """The watcher's queue overflowed; it must resume from its last resourceVersion."""


@dataclass(eq=False)
class Subscription:
    kinds: frozenset[str] | None
    queue: asyncio.Queue[Change | None] = field(default_factory=lambda: asyncio.Queue(maxsize=20000))
    overflowed: bool = False


class ChangeFeed:
    def __init__(self, store: Store, poll_interval: float = 0.25, batch: int = 2000) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.batch = batch
        self.position = 0
        self._subs: set[Subscription] = set()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading = False
        self._held: list[Change] = []  # committed here while the log was being read: dispatched after it

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.position = await asyncio.to_thread(self.store.current_rv)
        self.store.add_listener(self._on_commit)
        self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in list(self._subs):
            self._close(sub)

    def _on_commit(self, logged: list[Change]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._push, logged)

    def _push(self, logged: list[Change]) -> None:
        """Changes committed in this process are dispatched without reading them back,
        when they follow on directly; any gap (a write by another process) is read from the log.
        While the log is being read, they are held and dispatched after the read, if they follow
        on from where it ended (reading them back was a twentieth of a controller process's work)."""
        if self._reading:
            self._held.extend(logged)
        elif logged[0].rv == self.position + 1:
            for change in logged:
                self._dispatch(change)
                self.position = change.rv
        elif logged[-1].rv > self.position and self._wake is not None:
            self._wake.set()

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for change in sorted(held, key=lambda c: c.rv):
            if change.rv <= self.position:
                continue  # the read brought it
            if change.rv != self.position + 1:
                if self._wake is not None:
                    self._wake.set()  # a gap (another process's write): the rest comes from the log
                return
            self._dispatch(change)
            self.position = change.rv

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            self._reading = True
            try:
                while True:
                    batch = await asyncio.to_thread(self.store.changes_since, self.position, None, self.batch)
                    for change in batch:
                        if change.rv > self.position:
                            self._dispatch(change)
                            self.position = change.rv
                    if len(batch) < self.batch:
                        break
            except Exception:  # the store may be briefly unreachable (PostgreSQL restart): retry next tick
                log.exception("change feed: reading the change log failed; retrying")
            finally:
                self._reading = False
                self._release_held()

    def _dispatch(self, change: Change) -> None:
        for sub in list(self._subs):
            if sub.kinds is not None and change.kind not in sub.kinds:
                continue
            try:
                sub.queue.put_nowait(change)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._close(sub)

    def _close(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self, kinds: frozenset[str] | None) -> AsyncIterator[Subscription]:
        sub = Subscription(kinds)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    async def changes(self, kinds: frozenset[str] | None, since: int) -> AsyncIterator[Change]:
        """Every change of these kinds after `since`, in order, then live ones, with no gap.

        Subscribes first, then catches up from the log, then drains the live queue
        skipping anything already sent. Raises Gone if `since` was compacted away.
        """
        async with self.subscribe(kinds) as sub:
            last = since
            while True:
                batch = await asyncio.to_thread(self.store.changes_since, last, set(kinds) if kinds else None, 1000)
                for change in batch:
                    last = change.rv
                    yield change
                if len(batch) < 1000:
                    break
            while True:
                item = await sub.queue.get()
                if item is None:
                    raise WatcherTooSlow(f"watch fell behind at resourceVersion {last}; resume from there")
                if item.rv <= last:
                    continue
                last = item.rv
                yield item

    @property
    def watchers(self) -> int:
        return len(self._subs)
