"""A mirror of a few fields of every object of one kind, kept from the store's change feed.

A controller that counts thousands of objects on every pass (a DPUSet counting its DPUs to keep
maxUnavailable) reads them from here instead of listing them from the store each time. Nothing
in it comes from anywhere but the store: a project is listed from the store (`Store.list_fields`)
the first time it is asked for, and every change the feed delivers afterwards is applied on top,
the newer resourceVersion winning, so a list and the changes that raced it merge in either order.
The controller applies what it wrote itself at once (`put`), so its next pass counts its own
writes even before the feed delivers them. With `current=True`, `rows` first waits until the
feed has delivered every write the store holds at that moment (another controller's write just
committed, a DPU failing, is counted before a decision is made on it), and reads the store
again if the feed is slow. A restarted controller starts from the store again.

Not thread-safe: used from the controller's event loop (the feed's mappers run there).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..api.selectors import LabelSelector
from ..store.store import Change, Store, fields_row

Row = dict[str, Any]

CATCH_UP_SECONDS = 2.0  # how long `rows(current=True)` waits for the feed before reading the store


class FieldMirror:
    def __init__(self, store: Store, kind: str, paths: list[tuple[str, ...]]) -> None:
        self.store = store
        self.kind = kind
        self.paths = paths
        self._rows: dict[str, dict[str, Row]] = {}  # project -> name -> the object cut down to `paths`
        self._gone: dict[str, dict[str, int]] = {}  # project -> name -> resourceVersion of its deletion
        self._listed: set[str] = set()
        self._order: dict[str, list[str]] = {}  # project -> its names sorted (until one comes or goes)
        self._newest: dict[str, int] = {}  # project -> the newest resourceVersion applied

    def apply(self, change: Change) -> None:
        """A change from the feed (of this kind)."""
        if change.type == "DELETED":
            if self._rows.get(change.project, {}).pop(change.name, None) is not None:
                self._order.pop(change.project, None)
            self._gone.setdefault(change.project, {})[change.name] = change.rv
            self._newest[change.project] = max(self._newest.get(change.project, 0), change.rv)
            return
        self._merge(change.project, self.cut(change.object()))

    def put(self, obj: dict[str, Any]) -> None:
        """An object as this controller just wrote it (other writes before it may still be on their way:
        it does not count as seen for `rows(current=True)`)."""
        self._merge(obj["metadata"]["project"], self.cut(obj), seen=False)

    def seen(self, project: str) -> int:
        """The newest resourceVersion of the project that the feed (or a list) has brought: what the
        last `rows` was as current as."""
        return self._newest.get(project, 0)

    async def rows(self, project: str, selector: LabelSelector | None = None, *, current: bool = False) -> list[Row]:
        """The project's objects (as `Store.list_fields` gives them), in name order; read-only. With
        `current`, as current as the store is now (see the module's text)."""
        if current and project in self._listed:
            newest = await self.store.call(self.store.newest_rv, self.kind, project)
            deadline = time.monotonic() + CATCH_UP_SECONDS
            while self._newest.get(project, 0) < newest:
                if time.monotonic() > deadline:
                    self.forget(project)  # the feed is behind: read the store
                    break
                await asyncio.sleep(0.002)
        if project not in self._listed:
            for row in await asyncio.to_thread(self.store.list_fields, self.kind, self.paths, project):
                self._merge(project, row)
            self._listed.add(project)
            self._gone.pop(project, None)  # tombstones older than the list are not needed any more
        rows = self._rows.get(project, {})
        order = self._order.get(project)
        if order is None:
            order = self._order[project] = sorted(rows)
        if selector is None or selector.is_empty():
            return [rows[name] for name in order]
        return [rows[name] for name in order if selector.matches(rows[name]["metadata"]["labels"])]

    def forget(self, project: str | None = None) -> None:
        """Read the project (every project) from the store again at the next `rows`."""
        projects = [project] if project is not None else list(self._listed)
        for each in projects:
            self._listed.discard(each)
            self._rows.pop(each, None)
            self._gone.pop(each, None)
            self._order.pop(each, None)
            self._newest.pop(each, None)

    def cut(self, obj: dict[str, Any]) -> Row:
        """`obj` cut down to the mirrored paths, shaped as `Store.list_fields` shapes its rows."""
        meta = obj["metadata"]
        return fields_row(
            self.kind,
            meta["name"],
            meta["project"],
            meta["resourceVersion"],
            meta.get("labels") or {},
            ((path, _at(obj, path)) for path in self.paths),
        )

    def _merge(self, project: str, row: Row, *, seen: bool = True) -> None:
        name = row["metadata"]["name"]
        rv = int(row["metadata"]["resourceVersion"])
        if self._gone.get(project, {}).get(name, -1) >= rv:
            return  # deleted after this version was read
        if seen:
            self._newest[project] = max(self._newest.get(project, 0), rv)
        rows = self._rows.setdefault(project, {})
        current = rows.get(name)
        if current is None:
            self._order.pop(project, None)
        if current is None or int(current["metadata"]["resourceVersion"]) < rv:
            rows[name] = row


def _at(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` in `obj`, None when it has none."""
    value: Any = obj
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    return value
