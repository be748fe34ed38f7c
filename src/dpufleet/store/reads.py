"""Reading the store: by key, lists (paged by key, narrowed by label and field selectors in the
database), lists cut down to some fields, the newest resourceVersions and the change log.

`Store` (store.py) is these reads plus the writes; the SQL that reads is here, beside nothing else.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Text, cast, func, literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from ..api.errors import BadRequest, Gone
from ..api.kinds import KindInfo, UnknownKind, lookup
from ..api.selectors import FieldRequirement, FieldSelector, LabelSelector
from .schema import changes, counter, objects

_SINGLE = threading.local()  # set while this thread reads with one statement (Store._single_statement)
_GET_SQL = "SELECT data FROM objects WHERE kind = ? AND project = ? AND name = ?"
_NEWEST_SQL = "SELECT max(rv) FROM objects WHERE kind = ? AND project = ?"
_FINGERPRINT_SQL = "SELECT count(*), max(rv) FROM objects WHERE kind = ? AND project = ?"
_PAGE_CHUNK = 500  # rows read at a time while a selector filters a page
_FORMAT_STYLE: dict[str, str] = {}


@dataclass(frozen=True)
class Change:
    """One committed write, as a watcher sees it."""

    rv: int
    type: str
    kind: str
    project: str
    name: str
    data: str  # the object's JSON after the write (before it, for DELETED)
    _parsed: dict[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)

    def object(self) -> dict[str, Any]:
        """The object, parsed once and shared by every watcher of the change: read it, never change it."""
        if self._parsed is None:
            object.__setattr__(self, "_parsed", orjson.loads(self.data))
        assert self._parsed is not None
        return self._parsed


@dataclass(frozen=True)
class Page:
    """Documents as stored (JSON text), the resourceVersion they were read at, and the key after
    which the next page starts (None: this was the last page)."""

    items: list[str]
    resource_version: int
    next_key: tuple[str, str] | None


@dataclass(frozen=True)
class ListResult:
    items: list[dict[str, Any]]
    resource_version: int


def _kind(kind: str | KindInfo) -> KindInfo:
    if isinstance(kind, KindInfo):
        return kind
    try:
        return lookup(kind)
    except UnknownKind as exc:
        raise BadRequest(str(exc)) from None


class StoreReads:
    """The read half of `Store`."""

    _engine: Engine

    @contextmanager
    def _single_statement(self) -> Iterator[Connection]:
        """A read connection for one statement: on SQLite without BEGIN (one SELECT is consistent on
        its own under WAL; BEGIN and its rollback were a third of a read by key)."""
        _SINGLE.on = True
        try:
            with self._engine.connect() as conn:
                yield conn
        finally:
            _SINGLE.on = False

    def list_raw(
        self,
        kind: str | KindInfo,
        project: str | None = None,
        selector: LabelSelector | None = None,
    ) -> tuple[list[str], int]:
        """Documents as JSON text (no re-serialisation), and the resourceVersion the list is consistent at."""
        page = self.list_page(kind, project, selector)
        return page.items, page.resource_version

    def list_page(
        self,
        kind: str | KindInfo,
        project: str | None = None,
        selector: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        *,
        limit: int | None = None,
        after: tuple[str, str] | None = None,
    ) -> Page:
        """One page of documents as JSON text, in (project, name) order, from one read transaction.

        Keyset pagination: the page starts after the key `after` (the last key of the previous page)
        and holds at most `limit` documents; `Page.next_key` is set when more may follow. Each page is
        one indexed range scan, so an object that exists during a whole listing is returned exactly
        once, whatever is created or deleted meanwhile (an offset would skip or repeat objects).
        Field requirements are narrowed in the database (json_extract / jsonb) and then checked
        exactly on each document; label selectors are checked on the stored labels."""
        info = _kind(kind)
        query = select(objects.c.project, objects.c.name, objects.c.data, objects.c.labels).where(
            objects.c.kind == info.kind
        )
        if project is not None:
            query = query.where(objects.c.project == project)
        if fields is not None and not fields.is_empty():
            query = query.where(*(self._field_clause(req) for req in fields.requirements))
        else:
            fields = None
        if selector is not None and selector.is_empty():
            selector = None
        filtered = selector is not None or fields is not None
        want = None if limit is None else limit + 1  # one more than asked: tells whether a next page exists
        chunk = want if want is None or not filtered else max(want, _PAGE_CHUNK)
        items: builtins.list[str] = []
        keys: builtins.list[tuple[str, str]] = []
        key = after
        with self._engine.connect() as conn, conn.begin():
            rv = int(conn.execute(select(counter.c.rv).where(counter.c.id == 1)).scalar_one())
            while True:
                page = query
                if key is not None:
                    page = page.where(
                        tuple_(objects.c.project, objects.c.name) > tuple_(literal(key[0]), literal(key[1]))
                    )
                page = page.order_by(objects.c.project, objects.c.name)
                if chunk is not None:
                    page = page.limit(chunk)
                rows = conn.execute(page).all()
                for row_project, name, data, labels in rows:
                    if selector is not None and not selector.matches(orjson.loads(labels)):
                        continue
                    if fields is not None and not fields.matches(orjson.loads(data)):
                        continue
                    items.append(data)
                    keys.append((row_project, name))
                    if want is not None and len(items) == want:
                        break
                if chunk is None or len(rows) < chunk or (want is not None and len(items) >= want):
                    break
                key = (rows[-1][0], rows[-1][1])
        if limit is not None and len(items) > limit:
            return Page(items[:limit], rv, keys[limit - 1])
        return Page(items, rv, None)

    def _field_clause(self, req: FieldRequirement) -> ColumnElement[bool]:
        """A condition the database checks for a field requirement: exact for the project and name
        columns; for a path inside the document, one that keeps every row that may match (the exact
        text comparison of FieldRequirement.matches follows on the document)."""
        columns: dict[tuple[str, ...], ColumnElement[str]] = {
            ("metadata", "name"): objects.c.name,
            ("metadata", "project"): objects.c.project,
        }
        column = columns.get(req.path)
        if column is not None:
            return column == req.value if req.equal else column != req.value
        if self._engine.dialect.name == "sqlite":
            path = literal(_sqlite_path(req.path))
            value: ColumnElement[Any] = func.json_extract(objects.c.data, path)
            json_type: ColumnElement[Any] = func.coalesce(func.json_type(objects.c.data, path), "")
            scalar_types: tuple[str, ...] = ("true", "false", "integer", "real")
            text_type = "text"
        else:
            body = cast(objects.c.data, JSONB)[req.path]
            value = body.astext
            json_type = func.coalesce(func.jsonb_typeof(body), "")
            scalar_types, text_type = ("number",), "string"
        if not req.equal:  # only a string equal to the value is surely excluded
            return or_(json_type != text_type, value != req.value)
        if req.value == "":  # also matches a missing field or null
            return or_(json_type.in_(("", "null")), value == "")
        return or_(value == req.value, json_type.in_(scalar_types))

    def list(
        self,
        kind: str | KindInfo,
        project: str | None = None,
        selector: LabelSelector | None = None,
    ) -> ListResult:
        raw, rv = self.list_raw(kind, project, selector)
        return ListResult([orjson.loads(item) for item in raw], rv)

    def list_fields(
        self,
        kind: str | KindInfo,
        paths: builtins.list[tuple[str, ...]],
        project: str | None = None,
        selector: LabelSelector | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Objects cut down to `paths` (and their name, project, labels and resourceVersion), in project
        and name order. The database picks the fields out of each document, so a controller that
        counts a thousand large objects does not parse them whole: on SQLite one json_extract per row,
        on PostgreSQL one jsonb cast. A path the object lacks is left out of it."""
        info = _kind(kind)
        if not paths:
            raise ValueError("list_fields needs at least one path")
        picked: ColumnElement[Any]
        if self._engine.dialect.name == "sqlite":
            picked = func.json_extract(
                objects.c.data, literal("$.metadata.name"), *(literal(_sqlite_path(p)) for p in paths)
            )
        else:
            body = cast(objects.c.data, JSONB)
            picked = cast(
                func.jsonb_build_array(body[("metadata", "name")], *(body[p] for p in paths)),
                Text,
            )
        query = select(objects.c.project, objects.c.name, objects.c.rv, objects.c.labels, picked).where(
            objects.c.kind == info.kind
        )
        if project is not None:
            query = query.where(objects.c.project == project)
        query = query.order_by(objects.c.project, objects.c.name)
        with self._single_statement() as conn:
            rows = conn.execute(query).all()
        result: builtins.list[dict[str, Any]] = []
        for row_project, name, rv, labels_text, values_text in rows:
            labels = orjson.loads(labels_text)
            if selector is not None and not selector.matches(labels):
                continue
            values = zip(paths, orjson.loads(values_text)[1:], strict=True)
            result.append(fields_row(info.kind, name, row_project, str(rv), labels, values))
        return result

    def newest_rv(self, kind: str | KindInfo, project: str) -> int:
        """The resourceVersion of the last write to an object of `kind` in `project` that still exists
        (0: none): what a mirror fed by the change feed must have seen to be as current as the store."""
        with self._single_statement() as conn:
            row = _driver(conn, _NEWEST_SQL, (_kind(kind).kind, project)).fetchone()
        return int(row[0] or 0)

    def fingerprint(self, kind: str | KindInfo, project: str) -> tuple[int, int]:
        """How many objects of `kind` there are in `project` and the newest one's resourceVersion: equal
        fingerprints mean the same objects in the same versions (resourceVersions only grow, so a create
        or an update raises the second number and a delete lowers the first). What a cache of a small
        kind compares before it lists again."""
        with self._single_statement() as conn:
            row = _driver(conn, _FINGERPRINT_SQL, (_kind(kind).kind, project)).fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    def current_rv(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(counter.c.rv).where(counter.c.id == 1)).scalar_one())

    def changes_since(self, since: int, kinds: set[str] | None = None, limit: int = 1000) -> builtins.list[Change]:
        """Committed changes with rv > since, oldest first. Raises Gone once since is compacted away."""
        query = select(
            changes.c.rv, changes.c.type, changes.c.kind, changes.c.project, changes.c.name, changes.c.data
        ).where(changes.c.rv > since)
        if kinds is not None and len(kinds) == 1:
            query = query.where(changes.c.kind == next(iter(kinds)))
        elif kinds is not None:
            query = query.where(changes.c.kind.in_(sorted(kinds)))
        query = query.order_by(changes.c.rv).limit(limit)
        with self._engine.connect() as conn, conn.begin():
            compacted = int(conn.execute(select(counter.c.compacted_rv).where(counter.c.id == 1)).scalar_one())
            if since < compacted:
                raise Gone(
                    f"resourceVersion {since} is too old (history starts after {compacted}): re-list, then watch"
                )
            rows = conn.execute(query).all()
        return [Change(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def fields_row(
    kind: str,
    name: str,
    project: str,
    resource_version: str,
    labels: dict[str, Any],
    values: Iterable[tuple[tuple[str, ...], Any]],
) -> dict[str, Any]:
    """An object cut down to some paths, as `Store.list_fields` gives it: identity, labels and each
    (path, value) placed at its path; a None value (the object lacks the path) is left out."""
    row: dict[str, Any] = {
        "kind": kind,
        "metadata": {"name": name, "project": project, "resourceVersion": resource_version, "labels": labels},
    }
    for path, value in values:
        if value is None:
            continue
        here = row
        for part in path[:-1]:
            here = here.setdefault(part, {})
        here[path[-1]] = value
    return row


def _driver(conn: Connection, sql: str, params: tuple[Any, ...]) -> Any:
    """Run `sql` (with ? placeholders) on the connection's driver connection, inside its transaction;
    the driver's cursor. PostgreSQL's driver takes %s: the statement is rewritten once."""
    if conn.dialect.paramstyle != "qmark":
        sql = _FORMAT_STYLE.get(sql) or _FORMAT_STYLE.setdefault(sql, sql.replace("?", "%s"))
    return conn.connection.driver_connection.execute(sql, params)  # type: ignore[union-attr]


def _sqlite_path(path: tuple[str, ...]) -> str:
    """A JSON path for SQLite's json_extract: $."a"."b" (quoted: keys with dots or dashes are safe)."""
    return "$" + "".join(f'."{part}"' for part in path)
