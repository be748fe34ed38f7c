"""The watch stream: NDJSON events of one kind, bounded in time.

A watch ends cleanly after its timeout (a final BOOKMARK carries the resourceVersion to resume
from), so a generated client, a proxy or a property-based test that reads the response to its
end is never left hanging; the project's own client resumes from that resourceVersion.
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


async def watch_stream(state: ServerState, query: WatchQuery, metrics: APIMetrics) -> AsyncIterator[bytes]:
    """NDJSON events. Without a resourceVersion, the current objects come first as ADDED."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + query.timeout
    metrics.watchers.inc()
    try:
        if query.since is None:
            page = await state.read(state.store.list_page, query.info, query.project, query.labels, query.fields)
            raw = page.items
            if query.visible is not None:
                raw = [item for item in raw if query.visible(orjson.loads(item))]
            for doc in raw:
                yield b'{"type":"ADDED","object":' + doc.encode() + b"}\n"
            start = page.resource_version
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
                if query.everything or query.wanted(change.object()):
                    yield b'{"type":"' + change.type.encode() + b'","object":' + change.data.encode() + b"}\n"
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
