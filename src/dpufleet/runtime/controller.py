"""Level-triggered controllers fed by the store's change feed.

A controller owns one kind. It lists all objects of that kind at start (and again
every `resync` seconds), then follows the change feed; every change puts the
object's key on a de-duplicated work queue. Workers call `reconcile(key)`, which
reads the current object and converges it: it sees the level (current state),
not the edge (which change happened), so missed or merged events are harmless.
A raised exception re-queues the key with exponential backoff; a Result may ask
to be called again after a delay (waiting on hardware, a timeout to check).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..api.errors import Gone
from ..store.feed import ChangeFeed, WatcherTooSlow
from ..store.store import Change, Store
from .metrics import RECONCILES
from .queue import Backoff, WorkQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Key:
    project: str
    name: str

    def __str__(self) -> str:
        return f"{self.project}/{self.name}"


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


DONE = Result()

# Maps a change of a watched (secondary) kind to the keys of the primary kind it affects.
Mapper = Callable[[Change], Iterable[Key]]


class Reconciler(abc.ABC):
    """One per kind. Subclasses set `kind` and implement `reconcile`."""

    kind: str
    workers: int = 4
    resync: float = 300.0
    backoff: Backoff = Backoff()
    # A controller that writes status (lastSeen, conditions) would otherwise wake itself
    # with every write. By default only changes users make (generation: spec; labels,
    # annotations, finalizers, deletion) wake it; it asks for later visits itself.
    wake_on_status: bool = False
    # A key woken by changes is reconciled at most once per `min_interval` seconds (its requeues and
    # retries keep their own timing): an object summarising thousands of others (a DPUSet) would
    # otherwise recount them all on every one of their status writes.
    min_interval: float = 0.0
    # Finalizers other controllers add or remove wake this one unless it says otherwise (a controller
    # that does a costly visit, such as a full inventory crawl, for changes that are not its business).
    wake_on_finalizers: bool = True
    # A spec change (a new generation) wakes it unless it says otherwise: one that looks at every object
    # on its own schedule anyway and reads the spec then (the health controller: a rollout writes the
    # spec of every DPU it updates, a visit each was a Redfish request each).
    wake_on_spec: bool = True

    def watches(self) -> dict[str, Mapper]:
        """Other kinds whose changes should wake objects of this kind."""
        return {}

    def interval(self, key: Key) -> float:
        """How often changes may wake `key` (`min_interval` unless overridden: a reconciler whose visit
        costs grow with the object, as a DPUSet's recount of its DPUs, may space them out)."""
        return self.min_interval

    def started(self, wake: Callable[[Key], None]) -> None:
        """Called once when the controller starts, with a function that wakes a key now, from any
        thread: for signals that are not store changes (a BMC's pushed event). None by default."""
        return None

    def relisted(self) -> None:
        """Called whenever the controller lists its kind again and follows the feed from there (at start,
        at each resync, after a watch that broke): what a reconciler mirrors of other kinds from their
        changes may have missed some, and is to be read from the store again."""
        return None

    def visit_after(self, change: Change) -> float:
        """Seconds after which a change of this kind that wakes its object is visited (0: now). An
        object with nothing to do until a known time (an Event until it expires) is not visited before."""
        return 0.0

    def wakes_on_status(self, obj: dict[str, Any]) -> bool:
        """Whether a status-only change of `obj` wakes it (`wake_on_status` unless overridden)."""
        return self.wake_on_status

    @abc.abstractmethod
    async def reconcile(self, key: Key) -> Result:
        """Converge the object named by key; raise to retry with backoff."""


class Controller:
    def __init__(self, store: Store, feed: ChangeFeed, reconciler: Reconciler) -> None:
        self.store = store
        self.feed = feed
        self.reconciler = reconciler
        self.queue: WorkQueue[Key] = WorkQueue(backoff=reconciler.backoff)
        self.reconciles = 0
        self.errors = 0
        self._seen: dict[Key, tuple[object, ...]] = {}
        self._started: dict[Key, float] = {}  # when each key's last reconcile started (min_interval)

    @property
    def name(self) -> str:
        return type(self.reconciler).__name__

    async def run(self) -> None:
        kinds = frozenset({self.reconciler.kind, *self.reconciler.watches()})
        loop = asyncio.get_running_loop()

        def wake(key: Key) -> None:
            loop.call_soon_threadsafe(lambda: loop.create_task(self.queue.add(key)))

        self.reconciler.started(wake)
        tasks = [
            asyncio.create_task(self._worker(i), name=f"{self.name}-worker-{i}") for i in range(self.reconciler.workers)
        ]
        tasks.append(asyncio.create_task(self._follow(kinds), name=f"{self.name}-follow"))
        try:
            await asyncio.gather(*tasks)
        finally:
            await self.queue.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _enqueue_all(self) -> int:
        self.reconciler.relisted()
        listing = await asyncio.to_thread(self.store.list, self.reconciler.kind)
        for obj in listing.items:
            meta = obj["metadata"]
            key = Key(meta["project"], meta["name"])
            self._seen[key] = trigger_state(obj, self.reconciler.wake_on_finalizers, self.reconciler.wake_on_spec)
            await self.queue.add(key)
        return listing.resource_version

    async def _follow(self, kinds: frozenset[str]) -> None:
        mappers = self.reconciler.watches()
        while True:
            since = await self._enqueue_all()
            try:
                async with asyncio.timeout(self.reconciler.resync):
                    async for change in self.feed.changes(kinds, since):
                        if change.kind == self.reconciler.kind and self._wakes(change):
                            later = self.reconciler.visit_after(change)
                            if later > 0:
                                await self.queue.add_after(Key(change.project, change.name), later)
                            else:
                                await self._wake(Key(change.project, change.name))
                        mapper = mappers.get(change.kind)
                        if mapper is not None:
                            for key in mapper(change):
                                await self._wake(key)
            except TimeoutError:
                continue  # periodic resync: list everything again
            except (Gone, WatcherTooSlow) as exc:
                log.warning("%s: watch restarted (%s)", self.name, exc)

    async def _wake(self, key: Key) -> None:
        interval = self.reconciler.interval(key)
        if interval > 0:
            since = time.monotonic() - self._started.get(key, float("-inf"))
            if since < interval:
                await self.queue.add_after(key, interval - since)
                return
        await self.queue.add(key)

    def _wakes(self, change: Change) -> bool:
        """Whether a change of the primary kind should wake the reconciler."""
        key = Key(change.project, change.name)
        if change.type == "DELETED":
            self._seen.pop(key, None)
            return True
        obj = change.object()
        state = trigger_state(obj, self.reconciler.wake_on_finalizers, self.reconciler.wake_on_spec)
        changed = self._seen.get(key) != state
        self._seen[key] = state  # also when its status wakes it: the next status write is not a "spec change"
        return changed or self.reconciler.wakes_on_status(obj)

    async def _worker(self, _index: int) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            started = self._started[key] = time.monotonic()
            try:
                result = await self.reconciler.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                RECONCILES.labels(self.name, "error").inc()
                self.queue.supersede(key, started)
                delay = await self.queue.add_rate_limited(key)
                log.warning(
                    "%s %s: %s (retry in %.2fs)", self.name, key, exc, delay, exc_info=log.isEnabledFor(logging.DEBUG)
                )
            else:
                self.queue.forget(key)
                RECONCILES.labels(self.name, "ok" if result.requeue_after is None else "requeue").inc()
                self.queue.supersede(key, started)  # this visit's result says when the next one is due
                if result.requeue_after is not None:
                    await self.queue.add_after(key, result.requeue_after)
            finally:
                self.reconciles += 1
                await self.queue.done(key)


def trigger_state(obj: dict[str, Any], finalizers: bool = True, spec: bool = True) -> tuple[object, ...]:
    """What, when it changes, is worth a reconcile: not status (nor finalizers, when `finalizers` is False;
    nor the spec, when `spec` is False)."""
    meta = obj.get("metadata") or {}
    return (
        meta.get("generation") if spec else None,
        tuple(sorted((meta.get("labels") or {}).items())),
        tuple(sorted((meta.get("annotations") or {}).items())),
        tuple(meta.get("finalizers") or ()) if finalizers else (),
        meta.get("deletionTimestamp"),
    )
