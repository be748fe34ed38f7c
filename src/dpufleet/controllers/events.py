"""Event reaper: Events are kept for a while, then removed (the audit log is what is kept forever)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from ..api.errors import NotFound
from ..api.meta import now
from ..store.store import Store
from .runtime.controller import DONE, Key, Reconciler, Result

EVENT_TTL_SECONDS = 24 * 3600.0


class EventReaper(Reconciler):
    kind = "Event"
    workers = 1

    def __init__(self, store: Store, ttl: float = EVENT_TTL_SECONDS) -> None:
        self.store = store
        self.ttl = ttl

    async def reconcile(self, key: Key) -> Result:
        try:
            event = await asyncio.to_thread(self.store.get, "Event", key.name, key.project)
        except NotFound:
            return DONE
        stamp = event.get("lastTimestamp") or event["metadata"]["creationTimestamp"]
        age = (now() - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
        if age >= self.ttl:
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self.store.delete, "Event", key.name, key.project)
            return DONE
        return Result(requeue_after=self.ttl - age)
