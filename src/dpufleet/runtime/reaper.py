"""Event reaper: Events are kept for a while, then removed (the audit log is what is kept forever)."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any

from ..api.errors import NotFound
from ..api.meta import now
from ..store.store import Change, Store
from .controller import DONE, Key, Mapper, Reconciler, Result

EVENT_TTL_SECONDS = 24 * 3600.0


class EventReaper(Reconciler):
    """An Event is visited when it is due to expire, not when it is written: a rollout writes a dozen
    per DPU, and a visit each would be work for nothing."""

    kind = "Event"
    workers = 1

    def __init__(self, store: Store, ttl: float = EVENT_TTL_SECONDS) -> None:
        self.store = store
        self.ttl = ttl
        self._due: dict[Key, float] = {}  # when each known Event is to be reaped (time.monotonic)

    def watches(self) -> dict[str, Mapper]:
        return {"Event": self._remember}

    def _remember(self, change: Change) -> list[Key]:
        key = Key(change.project, change.name)
        if change.type == "DELETED":
            self._due.pop(key, None)
        else:
            self._due[key] = time.monotonic() + self._left(change.object())
        return []

    def visit_after(self, change: Change) -> float:
        if change.type == "DELETED":
            return 0.0
        return max(self._left(change.object()), 0.001)

    def _left(self, event: dict[str, Any]) -> float:
        """Seconds until the Event expires, from its last occurrence."""
        stamp = event.get("lastTimestamp") or event["metadata"]["creationTimestamp"]
        return self.ttl - (now() - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()

    async def reconcile(self, key: Key) -> Result:
        due = self._due.get(key)
        if due is not None and due > time.monotonic():
            return Result(requeue_after=due - time.monotonic())  # the runtime's resync, or a repeat folded in
        try:  # due, or an Event from before a restart: what is stored decides
            event = await self.store.call(self.store.get, "Event", key.name, key.project)
        except NotFound:
            self._due.pop(key, None)
            return DONE
        left = self._left(event)
        if left <= 0:
            self._due.pop(key, None)
            with contextlib.suppress(NotFound):
                await self.store.call(self.store.delete, "Event", key.name, key.project)
            return DONE
        self._due[key] = time.monotonic() + left
        return Result(requeue_after=left)
