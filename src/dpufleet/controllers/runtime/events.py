"""Recording Events as objects, folding repeats into one Event with a count."""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import weakref
from typing import Any, Literal

from ...api.errors import AlreadyExists, Conflict, NotFound
from ...api.meta import isotime, now
from ...store.store import Store

log = logging.getLogger(__name__)


class _Slot:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.done = threading.Event()
        self.result: dict[str, Any] | BaseException | None = None


class _GroupCommit:
    """Event creates from many threads written together: while one batch is being written, the
    creates that arrive meanwhile gather for the next (as the API server's CreateBatcher does for
    its requests). No one waits for a timer: a lone create is written at once; each caller returns
    only once its own create is committed (or failed)."""

    MAX_BATCH = 256

    def __init__(self, store: Store) -> None:
        self._store = weakref.ref(store)  # weak: the registry below must not keep a closed store alive
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._writing = False

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        slot = _Slot(doc)
        with self._lock:
            self._pending.append(slot)
            lead = not self._writing
            self._writing = True
        if lead:
            self._drain()
        else:
            slot.done.wait()
        if isinstance(slot.result, BaseException):
            raise slot.result
        assert slot.result is not None
        return slot.result

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                if not batch:
                    self._writing = False
                    return
            store = self._store()
            try:
                if store is None:
                    raise RuntimeError("the store is gone")
                results: list[Any] = list(store.create_many([s.doc for s in batch]))
            except BaseException as exc:  # the store failed as a whole: every waiter hears of it
                results = [exc] * len(batch)
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
                slot.done.set()


_committers: weakref.WeakKeyDictionary[Store, _GroupCommit] = weakref.WeakKeyDictionary()
_committers_lock = threading.Lock()


def _committer(store: Store) -> _GroupCommit:
    with _committers_lock:
        found = _committers.get(store)
        if found is None:
            found = _committers[store] = _GroupCommit(store)
        return found


class EventRecorder:
    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source
        self._creates = _committer(store)  # shared by every recorder of this store

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
                    return self._creates.create(copy.deepcopy(fresh))
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
