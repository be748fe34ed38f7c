"""Recording Events as objects, folding repeats into one Event with a count."""

from __future__ import annotations

import copy
import hashlib
import logging
from typing import Any, Literal

from ...api.errors import AlreadyExists, Conflict, NotFound
from ...api.meta import isotime, now
from ...store.store import Store

log = logging.getLogger(__name__)


class EventRecorder:
    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source

    def record(
        self,
        obj: dict[str, Any],
        reason: str,
        message: str = "",
        type_: Literal["Normal", "Warning"] = "Normal",
    ) -> dict[str, Any] | None:
        """Record that `reason` happened to `obj`. Never raises: an event is not worth failing work for."""
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
        for _ in range(3):
            try:
                try:  # most events are new: create first, fold into the existing one when it is a repeat
                    return self.store.create_grouped(copy.deepcopy(fresh))  # with other threads' creates
                except AlreadyExists:
                    current = self.store.get("Event", name, project)
                current["count"] = int(current.get("count", 1)) + 1
                current["lastTimestamp"] = stamp
                return self.store.update(current)
            except (NotFound, Conflict):
                continue
            except Exception:
                log.exception("could not record event %s on %s/%s", reason, obj["kind"], meta["name"])
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
