"""Event reaper: Events are kept for a while, then removed (the audit log is what is kept forever)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

from ..api.errors import NotFound
from ..api.meta import now
from ..store.store import Change, Store
from .runtime.controller import DONE, Key, Mapper, Reconciler, Result

EVENT_TTL_SECONDS = 24 * 3600.0


class EventReaper(Reconciler):
    kind = "Event"
    workers = 1

    def __init__(self, store: Store, ttl: float = EVENT_TTL_SECONDS) -> None:
        self.store = store
        self.ttl = ttl
        # The time of each Event just written, taken from the change that woke it: a dozen Events per DPU
        # update would otherwise each cost a read only to learn they are seconds old.
        self._stamps: dict[Key, str] = {}
        self._due: dict[Key, float] = {}  # when each known Event is to be reaped (time.monotonic)

    def watches(self) -> dict[str, Mapper]:
        return {"Event": self._remember}

    def _remember(self, change: Change) -> list[Key]:
        key = Key(change.project, change.name)
        if change.type == "DELETED":
            self._stamps.pop(key, None)
            self._due.pop(key, None)
        else:
            event = change.object()
            self._stamps[key] = event.get("lastTimestamp") or event["metadata"]["creationTimestamp"]
        return []  # the Event's own change wakes it

    async def reconcile(self, key: Key) -> Result:
        stamp = self._stamps.pop(key, None)
        due = self._due.get(key)
        if stamp is None and due is not None and due > time.monotonic():
            return Result(requeue_after=due - time.monotonic())  # the runtime's resync: nothing new
        if stamp is None:  # the time to reap, or an Event from before a restart: read what is stored
            try:
                event = await asyncio.to_thread(self.store.get, "Event", key.name, key.project)
            except NotFound:
                return DONE
            stamp = event.get("lastTimestamp") or event["metadata"]["creationTimestamp"]
        age = (now() - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
        if age >= self.ttl:
            self._due.pop(key, None)
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self.store.delete, "Event", key.name, key.project)
            return DONE
        self._due[key] = time.monotonic() + self.ttl - age
        return Result(requeue_after=self.ttl - age)
