"""The watch stream: NDJSON events of one kind, bounded in time.

A watch ends cleanly after its timeout (a final BOOKMARK carries the resourceVersion to resume
from), so a generated client, a proxy or a property-based test that reads the response to its
end is never left hanging; the project's own client resumes from that resourceVersion.

A watch with a label or field selector (or a caller who sees only part of a kind) follows which
objects it has sent, as Kubernetes does: an object changed so that it stops matching is sent as
DELETED (with the object as it now is), one changed so that it starts matching as ADDED. A watch
resumed from a resourceVersion takes the objects that match when it resumes as the ones its
client has (the stream does not know what matched at that version).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..api.errors import Gone
from ..api.kinds import KindInfo
from ..api.selectors import FieldSelector, LabelSelector
from ..store.feed import WatcherTooSlow
from ..store.store import Change
from .access import Visible
from .common import ServerState
from .metrics import APIMetrics

BOOKMARK_EVERY = 10.0


@dataclass(frozen=True)
class WatchQuery:
    info: KindInfo
    project: str | None
    labels: LabelSelector | None
    fields: FieldSelector | None
    since: int | None
    timeout: float
    visible: Visible | None = None

    def wanted(self, obj: dict[str, Any]) -> bool:
        """Whether an object, as a change left it, belongs to this watch."""
        meta = obj.get("metadata", {})
        if self.project is not None and meta.get("project") != self.project:
            return False
        if self.visible is not None and not self.visible(obj):
            return False
        if self.labels is not None and not self.labels.matches(meta.get("labels") or {}):
            return False
        return self.fields is None or self.fields.matches(obj)

    @property
    def everything(self) -> bool:
        return self.project is None and self.labels is None and self.fields is None and self.visible is None

    @property
    def tracks_membership(self) -> bool:
        """Whether an object can start or stop belonging to this watch (its project never changes)."""
        return self.labels is not None or self.fields is not None or self.visible is not None


Key = tuple[str, str]


def _key(doc: dict[str, Any]) -> Key:
    meta = doc.get("metadata") or {}
    return (str(meta.get("project")), str(meta.get("name")))


def _event(type_: str, data: str) -> bytes:
    return b'{"type":"' + type_.encode() + b'","object":' + data.encode() + b"}\n"


def membership_event(query: WatchQuery, known: set[Key], change: Change) -> bytes | None:
    """The event a membership-tracking watch sends for a change (None: nothing), updating `known`."""
    key = (change.project, change.name)
    matches = query.wanted(change.object())
    if change.type == "DELETED":
        if key in known or matches:
            known.discard(key)
            return _event("DELETED", change.data)
        return None
    if matches:
        type_ = "MODIFIED" if key in known and change.type == "MODIFIED" else "ADDED"
        known.add(key)
        return _event(type_, change.data)
    if key in known:  # it stopped matching: gone from this watch's view
        known.discard(key)
        return _event("DELETED", change.data)
    return None


async def watch_stream(state: ServerState, query: WatchQuery, metrics: APIMetrics) -> AsyncIterator[bytes]:
    """NDJSON events. Without a resourceVersion, the current objects come first as ADDED."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + query.timeout
    metrics.watchers.inc()
    known: set[Key] | None = set() if query.tracks_membership else None
    try:
        if query.since is None or known is not None:
            page = await state.read(state.store.list_page, query.info, query.project, query.labels, query.fields)
            docs = [(item, orjson.loads(item)) for item in page.items] if known is not None else None
            if docs is not None and query.visible is not None:
                docs = [(item, doc) for item, doc in docs if query.visible(doc)]
            if known is not None and docs is not None:
                known.update(_key(doc) for _, doc in docs)
            if query.since is None:
                for item in page.items if docs is None else [item for item, _ in docs]:
                    yield _event("ADDED", item)
                start = page.resource_version
            else:
                start = query.since
        else:
            start = query.since
        yield _bookmark(start)
        changes = state.feed.changes(frozenset({query.info.kind}), start).__aiter__()
        pending: asyncio.Future[Change] | None = None  # kept across bookmarks: never cancelled mid-change
        last = start
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    yield _bookmark(last)  # where to resume: the stream ends at its timeout
                    return
                if pending is None:
                    pending = asyncio.ensure_future(changes.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=min(BOOKMARK_EVERY, left))
                if not done:
                    if loop.time() < deadline:
                        yield _bookmark(last)
                    continue
                task, pending = pending, None
                try:
                    change = task.result()
                except StopAsyncIteration:
                    return
                last = change.rv
                if known is not None:
                    event = membership_event(query, known, change)
                    if event is not None:
                        yield event
                elif query.everything or query.wanted(change.object()):
                    yield _event(change.type, change.data)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Gone, WatcherTooSlow):
                    await pending
            await changes.aclose()  # type: ignore[attr-defined]
    except (Gone, WatcherTooSlow) as exc:
        status = Gone(str(exc)).to_status()
        yield orjson.dumps({"type": "ERROR", "object": status}) + b"\n"
    finally:
        metrics.watchers.dec()


def _bookmark(rv: int) -> bytes:
    return orjson.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(rv)}}}) + b"\n"
