"""Recording Events as objects, folding repeats into one Event with a count.

`record` writes at once and returns the Event (threads, tests). `post` is for a controller's event
loop: it returns at once and the Events posted meanwhile are written together, one transaction per
batch (a rollout makes a dozen Events per DPU: one trip to a store thread and one transaction each
were a tenth of the control plane's work at 1,000 DPUs). A posted Event is in the store within
milliseconds; a process killed in between loses at most those, never a status or an audit record.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Literal

from ..api.errors import AlreadyExists, Conflict, NotFound
from ..api.meta import isotime, now
from ..api.patch import json_copy
from ..store.store import Store

log = logging.getLogger(__name__)


class EventRecorder:
    MAX_BATCH = 256

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source
        self._posted: list[dict[str, Any]] = []
        self._writer: asyncio.Task[None] | None = None

    def record(
        self,
        obj: dict[str, Any],
        reason: str,
        message: str = "",
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> dict[str, Any] | None:
        """Record that `reason` happened to `obj`. Never raises: an event is not worth failing work for."""
        return self._write(self._event(obj, reason, message, type_))

    def post(
        self,
        obj: dict[str, Any],
        reason: str,
        message: str = "",
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> None:
        """Record from the event loop without waiting: written with the other Events posted meanwhile."""
        self._posted.append(self._event(obj, reason, message, type_))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_posted())

    async def _write_posted(self) -> None:
        try:
            while self._posted:
                batch, self._posted = self._posted[: self.MAX_BATCH], self._posted[self.MAX_BATCH :]
                await self.store.call(self._write_batch, batch)
        finally:
            self._writer = None
            left, self._posted = self._posted, []
            if left:  # cancelled (the loop is stopping): what was posted is still written; the batch in
                self._write_batch(left)  # flight is written by its thread, which a cancel does not stop

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        try:
            results = self.store.create_many([json_copy(fresh) for fresh in batch])
        except Exception:
            log.exception("could not record %d event(s)", len(batch))
            return
        for fresh, result in zip(batch, results, strict=True):
            if isinstance(result, AlreadyExists):
                self._write(fresh)  # a repeat: folded into the existing Event
            elif isinstance(result, BaseException):
                log.warning("could not record event %s: %s", fresh["reason"], result)

    def _event(
        self, obj: dict[str, Any], reason: str, message: str, type_: Literal["Normal", "Warning"]
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        project = meta.get("project", "default")
        key = "\x00".join((obj["kind"], meta["name"], meta.get("uid", ""), type_, reason, message, self.source))
        name = f"{meta['name'][:200]}.{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        stamp = isotime(now())
        fresh = {
            "kind": "Event",
            "metadata": {"name": name, "project": project},
            "involvedObject": {"kind": obj["kind"], "name": meta["name"], "project": project, "uid": meta.get("uid")},
            "type": type_,
            "reason": reason,
            "message": message,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": self.source,
        }
        return fresh

    def _write(self, fresh: dict[str, Any]) -> dict[str, Any] | None:
        name, project, stamp = fresh["metadata"]["name"], fresh["metadata"]["project"], fresh["lastTimestamp"]
        for _ in range(3):
            try:
                try:  # most events are new: create first, fold into the existing one when it is a repeat
                    return self.store.create_grouped(json_copy(fresh))  # with other threads' creates
                except AlreadyExists:
                    current = self.store.get("Event", name, project)
                current["count"] = int(current.get("count", 1)) + 1
                current["lastTimestamp"] = stamp
                return self.store.update(current)
            except (NotFound, Conflict):
                continue
            except Exception:
                involved = fresh["involvedObject"]
                log.exception("could not record event %s on %s/%s", fresh["reason"], involved["kind"], involved["name"])
                return None
        return None


def events_for(store: Store, kind: str, name: str, project: str = "default", limit: int = 20) -> list[dict[str, Any]]:
    """The most recent events about one object, newest last."""
    items = [
        ev
        for ev in store.list("Event", project).items
        if ev["involvedObject"]["kind"] == kind and ev["involvedObject"]["name"] == name
    ]
    items.sort(key=lambda ev: ev.get("lastTimestamp") or "")
    return items[-limit:]
