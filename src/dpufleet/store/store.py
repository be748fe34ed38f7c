"""The resource store: documents with optimistic concurrency, finalizers, cascade, and a change log.

SQLite (the embedded default, WAL) and PostgreSQL share this code. Every write is one
transaction that (1) takes the next resourceVersion from the single counter row — which
locks it until commit, so resourceVersions are committed in order on both backends —
(2) writes the object and (3) appends the change to the log that watches read.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from ..api.errors import AlreadyExists, APIError, BadRequest, Conflict, Invalid, NotFound
from ..api.kinds import KindInfo
from ..api.meta import DEFAULT_PROJECT, isotime, now
from ..api.patch import merge_patch
from ..api.validation import validate_document, validate_status
from ..crypto.secrets import SecretBox
from .groupcommit import GroupCommit
from .reads import _GET_SQL, _SINGLE, Change, ListResult, Page, StoreReads, _driver, _kind, fields_row
from .schema import changes, counter, objects, secrets

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["ADDED", "DELETED", "MODIFIED", "Change", "ListResult", "Page", "Store", "fields_row"]

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
# Statements built once: building them per call costs more than SQLite's own work.
_INSERT_OBJECT = insert(objects)
_INSERT_CHANGE = insert(changes)
# The statements of every single-object write, as the driver takes them (qmark; _driver turns them into
# the format style for psycopg): through SQLAlchemy's execution path each cost several times its work.
_NEXT_RV_SQL = "UPDATE counter SET rv = rv + 1 WHERE id = 1 RETURNING rv"
_UPDATE_OBJECT_SQL = "UPDATE objects SET rv = ?, labels = ?, owner_uids = ?, data = ? WHERE uid = ?"
_INSERT_CHANGE_SQL = "INSERT INTO changes (rv, kind, project, name, type, data) VALUES (?, ?, ?, ?, ?, ?)"
_GET_SQL_FOR_UPDATE = _GET_SQL + " FOR UPDATE"
_EXISTING_NAMES = select(objects.c.name).where(
    objects.c.kind == bindparam("b_kind"),
    objects.c.project == bindparam("b_project"),
    objects.c.name.in_(bindparam("b_names", expanding=True)),
)
_ADVANCE_RV = update(counter).where(counter.c.id == 1).values(rv=counter.c.rv + bindparam("n")).returning(counter.c.rv)
_SYSTEM_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "resourceVersion")

# Called inside a write's transaction with the object before and after the write (None before a
# create, None after a delete). It may refuse the write by raising (an APIError), and may write
# rows of its own on the connection (the audit record), which commit or roll back with the change.
WriteHook = Callable[[Connection, dict[str, Any] | None, dict[str, Any] | None], None]
# Called inside a delete's transaction with the object about to be deleted; refuses by raising
# (an image still used by DPUs). In the transaction, so no user can appear between check and delete.
DeleteGuard = Callable[[Connection, dict[str, Any]], None]
# Called inside a create's transaction with the new object and the objects created before it in the
# same transaction (a group commit's batch); refuses by raising (a second DPU for a serial).
CreateGuard = Callable[[Connection, dict[str, Any], list[dict[str, Any]]], None]
# Refuses a spec (on create and on every spec change) by raising; sees the transaction's connection.
SpecGuard = Callable[[Connection, dict[str, Any]], None]


def _spec_part(doc: dict[str, Any]) -> dict[str, Any]:
    """Everything the user owns apart from metadata: a change here bumps generation."""
    return {k: v for k, v in doc.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _dumps(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'dpufleet.db'}"


class Store(StoreReads):
    """Thread-safe; one per process. Open with `Store.open(url)`."""

    def __init__(self, url: str, secret_box: SecretBox | None = None) -> None:
        self.url = url
        self.secret_box = secret_box
        self.is_sqlite = url.startswith("sqlite")
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._delete_guards: dict[str, list[DeleteGuard]] = {}
        self._create_guards: dict[str, list[CreateGuard]] = {}
        self._spec_guards: dict[str, list[SpecGuard]] = {}
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._writer: Connection | None = None  # SQLite: the one write connection, opened at the first write
        self._create_group: GroupCommit[dict[str, Any], dict[str, Any]] = GroupCommit(self.create_many)
        if self.is_sqlite:
            # reads: as many pooled connections as threads read at once (no connection made per read),
            # and no rollback when one is returned: every read path ends its own transaction
            self._engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=16,
                max_overflow=16,
                pool_reset_on_return=None,
            )
            self._write_engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}, poolclass=StaticPool
            )
            for engine, immediate in ((self._engine, False), (self._write_engine, True)):
                _sqlite_pragmas(engine, immediate=immediate)
        else:
            url = url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
            self._engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
            self._write_engine = self._engine

    @classmethod
    def open(cls, url: str, secret_box: SecretBox | None = None) -> Store:
        store = cls(url, secret_box)
        store.migrate()
        return store

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._write_engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        if self._writer is not None:
            with self._write_lock or threading.Lock():
                self._writer.close()
                self._writer = None
        self._engine.dispose()
        self._write_engine.dispose()

    def add_listener(self, callback: Callable[[list[Change]], None]) -> None:
        """Called with a transaction's changes after it commits in this process (feeds watchers)."""
        self._listeners.append(callback)

    def add_delete_guard(self, kind: str, guard: DeleteGuard) -> None:
        """Refuse deletes of `kind` the guard raises for (once per guard)."""
        guards = self._delete_guards.setdefault(_kind(kind).kind, [])
        if guard not in guards:
            guards.append(guard)

    def add_create_guard(self, kind: str, guard: CreateGuard) -> None:
        """Refuse creates of `kind` the guard raises for (once per guard)."""
        guards = self._create_guards.setdefault(_kind(kind).kind, [])
        if guard not in guards:
            guards.append(guard)

    def add_spec_guard(self, kind: str, guard: SpecGuard) -> None:
        """Refuse creates and spec changes of `kind` the guard raises for, inside the write's transaction
        (a rule across objects, such as no dependency cycle among services; once per guard)."""
        guards = self._spec_guards.setdefault(_kind(kind).kind, [])
        if guard not in guards:
            guards.append(guard)

    def _guard_create(self, conn: Connection, obj: dict[str, Any], batch: builtins.list[dict[str, Any]]) -> None:
        for guard in self._create_guards.get(obj["kind"], ()):
            guard(conn, obj, batch)
        for spec_guard in self._spec_guards.get(obj["kind"], ()):
            spec_guard(conn, obj)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking store operation from a coroutine, the way this database wants it.

        SQLite is a local file: a read by key takes about 50 us and a status write's commit about
        120 us, while a hop to a worker thread and back costs 150-350 us of CPU in GIL hand-offs
        (docs/benchmarks.md, issue 15's profile). So on SQLite the operation runs at once on the
        caller's thread; a database over the network (PostgreSQL) is waited for in a worker thread.
        Whole-fleet lists and the change log's batches stay in threads (`asyncio.to_thread`) on
        every database: they take milliseconds."""
        if self.is_sqlite:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    # --- transactions -----------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction for tables beside the objects (tokens, audit); serialised with object writes."""
        with self._write() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read connection (in a transaction, so what it reads is consistent)."""
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; after it commits, listeners get the changes it logged.

        Callables in conn.info["before_commit"] run last in the transaction (the audit log
        appends a batch's records there in one statement)."""
        logged: list[Change] = []
        if self._write_lock is not None:
            with self._write_lock:
                # SQLite has one writer: its connection is kept open between transactions (a checkout from
                # the pool and a new Connection per write were a tenth of a status write)
                if self._writer is None:
                    self._writer = self._write_engine.connect()
                with self._writer.begin():
                    conn = self._writer
                    conn.info["changes"] = logged
                    conn.info["before_commit"] = []
                    yield conn
                    for flush in conn.info["before_commit"]:
                        flush(conn)
                self._notify(logged)  # under the lock: listeners see changes in commit order
        else:
            with self._write_engine.begin() as conn:
                conn.info["changes"] = logged
                conn.info["before_commit"] = []
                yield conn
                for flush in conn.info["before_commit"]:
                    flush(conn)
            self._notify(logged)

    def _notify(self, logged: list[Change]) -> None:
        if not logged:
            return
        for callback in self._listeners:
            callback(logged)

    @staticmethod
    def _next_rv(conn: Connection) -> int:
        return int(_driver(conn, _NEXT_RV_SQL, ()).fetchone()[0])

    @staticmethod
    def _log(conn: Connection, rv: int, change: str, doc: dict[str, Any], data: str) -> None:
        meta = doc["metadata"]
        _driver(conn, _INSERT_CHANGE_SQL, (rv, doc["kind"], meta["project"], meta["name"], change, data))
        conn.info["changes"].append(Change(rv, change, doc["kind"], meta["project"], meta["name"], data))

    @staticmethod
    def _load(conn: Connection, kind: KindInfo, project: str, name: str, *, for_update: bool = False) -> dict[str, Any]:
        """Read one object; for_update locks its row until commit (PostgreSQL), so a
        concurrent writer cannot pass the same resourceVersion check (no lost update).

        The most frequent statement of all goes straight to the database driver, in the connection's
        transaction: SQLAlchemy's execution path cost three times the query itself."""
        sql = _GET_SQL_FOR_UPDATE if for_update and conn.dialect.name != "sqlite" else _GET_SQL
        row = _driver(conn, sql, (kind.kind, project, name)).fetchone()
        if row is None:
            raise NotFound(f"{kind.singular} {name!r} not found in project {project!r}")
        result: dict[str, Any] = orjson.loads(row[0])
        return result

    def _save(self, conn: Connection, doc: dict[str, Any], rv: int, change: str) -> dict[str, Any]:
        meta = doc["metadata"]
        meta["resourceVersion"] = str(rv)
        data = _dumps(doc)
        values = {
            "rv": rv,
            "labels": _dumps(meta.get("labels") or {}),
            "owner_uids": " ".join(ref["uid"] for ref in meta.get("ownerReferences") or []),
            "data": data,
        }
        if change == ADDED:
            values.update(kind=doc["kind"], project=meta["project"], name=meta["name"], uid=meta["uid"])
            conn.execute(_INSERT_OBJECT, values)
        else:
            _driver(conn, _UPDATE_OBJECT_SQL, (rv, values["labels"], values["owner_uids"], values["data"], meta["uid"]))
        self._log(conn, rv, change, doc, data)
        return doc

    # --- reads ------------------------------------------------------------------------------------------

    def get(self, kind: str | KindInfo, name: str, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
        info = _kind(kind)
        with self._single_statement() as conn:
            return self._load(conn, info, project, name)

    def compact(self, keep: int) -> int:
        """Drop all but the newest `keep` changes. Returns the new compaction point."""
        with self._write() as conn:
            rv, compacted = conn.execute(select(counter.c.rv, counter.c.compacted_rv)).one()
            point = max(int(compacted), int(rv) - keep)
            if point > compacted:
                conn.execute(delete(changes).where(changes.c.rv <= point))
                conn.execute(update(counter).where(counter.c.id == 1).values(compacted_rv=point))
        return int(point)

    # --- writes -----------------------------------------------------------------------------------------

    def _prepare_create(
        self, doc: dict[str, Any], keep_status: bool
    ) -> tuple[KindInfo, dict[str, Any], dict[str, str]]:
        info, obj = validate_document(doc)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise Invalid("metadata.resourceVersion: must not be set on create")
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = isotime(now())
        meta["generation"] = 1
        if info.has_status and not keep_status:
            obj["status"] = validate_status(info, {})
        return info, obj, self._take_secrets(info, obj)

    def create_many(
        self,
        docs: builtins.list[dict[str, Any]],
        hooks: builtins.list[WriteHook | None] | None = None,
    ) -> builtins.list[dict[str, Any] | APIError]:
        """Create several objects in one transaction (group commit); each gets its own result.

        The API server batches concurrent creates through this: one BEGIN, one counter
        update and one COMMIT for the batch instead of one each. An invalid or duplicate
        document fails alone; the others are created. `hooks[i]`, if given, runs in the
        transaction for docs[i] when it is created (the API's audit record): it must not refuse.
        """
        hook_of = hooks or [None] * len(docs)
        results: builtins.list[dict[str, Any] | APIError] = []
        ready: builtins.list[tuple[int, KindInfo, dict[str, Any]]] = []
        for index, doc in enumerate(docs):
            try:
                info, obj, taken = self._prepare_create(doc, keep_status=False)
            except APIError as exc:
                results.append(exc)
                continue
            results.append(obj)
            if taken or info.secret_fields:
                results[index] = _call(self.create, doc, hook_of[index])  # secrets take the one-by-one path
                continue
            ready.append((index, info, obj))
        if not ready:
            return results
        keys = {(info.kind, obj["metadata"]["project"], obj["metadata"]["name"]) for _, info, obj in ready}
        try:
            with self._write() as conn:
                existing = self._existing(conn, keys)
                seen: set[tuple[str, str, str]] = set()
                batch: builtins.list[dict[str, Any]] = []
                for index, info, obj in ready:
                    key = (info.kind, obj["metadata"]["project"], obj["metadata"]["name"])
                    if key in existing or key in seen:
                        results[index] = AlreadyExists(
                            f"{info.singular} {key[2]!r} already exists in project {key[1]!r}"
                        )
                        continue
                    try:
                        self._guard_create(conn, obj, batch)
                    except APIError as exc:
                        results[index] = exc
                        continue
                    seen.add(key)
                    batch.append(obj)
                    hook = hook_of[index]
                    if hook is not None:
                        hook(conn, None, obj)
                if batch:
                    last = int(conn.execute(_ADVANCE_RV, {"n": len(batch)}).scalar_one())
                    object_rows, change_rows = [], []
                    for offset, obj in enumerate(batch):
                        rv = last - len(batch) + 1 + offset
                        meta = obj["metadata"]
                        meta["resourceVersion"] = str(rv)
                        data = _dumps(obj)
                        object_rows.append(
                            {
                                "kind": obj["kind"],
                                "project": meta["project"],
                                "name": meta["name"],
                                "uid": meta["uid"],
                                "rv": rv,
                                "labels": _dumps(meta.get("labels") or {}),
                                "owner_uids": " ".join(r["uid"] for r in meta.get("ownerReferences") or []),
                                "data": data,
                            }
                        )
                        row = {
                            "rv": rv,
                            "kind": obj["kind"],
                            "project": meta["project"],
                            "name": meta["name"],
                            "type": ADDED,
                        }
                        change_rows.append({**row, "data": data})
                        conn.info["changes"].append(Change(data=data, **row))
                    conn.execute(_INSERT_OBJECT, object_rows)
                    conn.execute(_INSERT_CHANGE, change_rows)
        except IntegrityError:
            # another process created one of these meanwhile (PostgreSQL): fall back to one by one
            for index, _info, _obj in ready:
                if not isinstance(results[index], APIError):
                    results[index] = _call(self.create, docs[index], hook_of[index])
        return results

    @staticmethod
    def _existing(conn: Connection, keys: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        found: set[tuple[str, str, str]] = set()
        by_kind: dict[tuple[str, str], builtins.list[str]] = {}
        for kind, project, name in keys:
            by_kind.setdefault((kind, project), []).append(name)
        for (kind, project), names in by_kind.items():
            rows = conn.execute(_EXISTING_NAMES, {"b_kind": kind, "b_project": project, "b_names": names}).all()
            found.update((kind, project, row[0]) for row in rows)
        return found

    @staticmethod
    def objects_in(conn: Connection, kind: str | KindInfo, project: str) -> builtins.list[dict[str, Any]]:
        """Every object of a kind in a project, read in the caller's transaction (for a guard)."""
        info = _kind(kind)
        rows = conn.execute(
            select(objects.c.data).where(objects.c.kind == info.kind, objects.c.project == project)
        ).all()
        return [orjson.loads(row[0]) for row in rows]

    def create(
        self, doc: dict[str, Any], *, keep_status: bool = False, hook: WriteHook | None = None
    ) -> dict[str, Any]:
        """Create an object. Status is dropped unless keep_status (controllers creating what they found)."""
        info, obj, taken = self._prepare_create(doc, keep_status)
        meta = obj["metadata"]
        try:
            with self._write() as conn:
                if hook is not None:
                    hook(conn, None, obj)
                self._guard_create(conn, obj, [])
                rv = self._next_rv(conn)
                self._store_secrets(conn, info, obj, taken, {})
                self._save(conn, obj, rv, ADDED)
        except IntegrityError:
            raise AlreadyExists(
                f"{info.singular} {meta['name']!r} already exists in project {meta['project']!r}"
            ) from None
        return obj

    def update(self, doc: dict[str, Any], *, hook: WriteHook | None = None) -> dict[str, Any]:
        """Replace spec and user metadata. Status is kept as stored (it has its own path): a status in
        `doc` is neither validated nor written (validating a DPU's large status was most of a spec write)."""
        info, obj = validate_document({k: v for k, v in doc.items() if k != "status"})
        meta = obj["metadata"]
        taken = self._take_secrets(info, obj)
        with self._write() as conn:
            current = self._load(conn, info, meta["project"], meta["name"], for_update=True)
            if hook is not None:  # before any check that could tell an outsider about the object
                hook(conn, current, obj)
            self._check_rv(info, current, meta.get("resourceVersion"))
            self._store_secrets(conn, info, obj, taken, current.get("spec") or {}, current["metadata"]["uid"])
            return self._replace(conn, info, obj, current)

    def patch_many(
        self,
        kind: str | KindInfo,
        patches: builtins.list[tuple[str, str, dict[str, Any]]],
        *,
        recheck: Callable[[], set[str]] | None = None,
    ) -> builtins.list[dict[str, Any] | APIError]:
        """Merge patches (name, project, patch) of objects of one kind, in one transaction: a rollout
        writes a wave of DPU specs at once. A resourceVersion in a patch's metadata is its precondition;
        each patch that fails (Conflict, NotFound, Invalid) fails alone, with its error as its result.

        `recheck` runs inside the write transaction, before any patch, and names the patches to leave
        out (each fails with Conflict): a decision made on a read can be checked against what other
        writers committed since, with no write able to land between the check and the patches (on
        SQLite; on PostgreSQL the window is the check itself)."""
        info = _kind(kind)
        results: builtins.list[dict[str, Any] | APIError] = []
        if info.secret_fields:  # secrets take the one-by-one path
            if recheck is not None:
                raise ValueError("patch_many: recheck is not supported for kinds with secret fields")
            for name, project, patch in patches:
                try:
                    results.append(self.patch(info, name, patch, project))
                except APIError as exc:
                    results.append(exc)
            return results
        with self._write() as conn:
            left_out = recheck() if recheck is not None else set()
            for name, project, patch in patches:
                if name in left_out:
                    results.append(Conflict(f"{info.kind} {project}/{name}: left out on recheck"))
                    continue
                try:
                    current = self._load(conn, info, project, name, for_update=True)
                    wanted = (patch.get("metadata") or {}).get("resourceVersion")
                    self._check_rv(info, current, wanted)
                    patched = merge_patch(current, patch)
                    if not isinstance(patched.get("metadata"), dict):
                        raise Invalid("metadata: must stay a mapping")
                    patched["metadata"]["name"], patched["metadata"]["project"] = name, project
                    patched.pop("status", None)
                    _, obj = validate_document(patched)
                    results.append(self._replace(conn, info, obj, current))
                except APIError as exc:
                    results.append(exc)
        return results

    def _replace(
        self, conn: Connection, info: KindInfo, obj: dict[str, Any], current: dict[str, Any]
    ) -> dict[str, Any]:
        """Write `obj` (validated, its checks passed) over `current`: system metadata and status kept."""
        meta = obj["metadata"]
        cur_meta = current["metadata"]
        for key in _SYSTEM_META:
            if key in cur_meta:
                meta[key] = cur_meta[key]
            else:
                meta.pop(key, None)
        if cur_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
            if added:
                raise Invalid(f"metadata.finalizers: cannot add {sorted(added)} while the object is deleting")
        if _spec_part(obj) != _spec_part(current):
            meta["generation"] = int(cur_meta.get("generation") or 1) + 1
            for spec_guard in self._spec_guards.get(info.kind, ()):
                spec_guard(conn, obj)
        if info.has_status:
            obj["status"] = current.get("status", {})
        if obj == current:
            return current  # no-op writes make no change and wake no watcher
        rv = self._next_rv(conn)
        return self._finish_or_save(conn, info, obj, rv)

    def create_grouped(self, doc: dict[str, Any]) -> dict[str, Any]:
        """create, written together with the creates other threads make meanwhile (store/groupcommit.py)."""
        return self._create_group.submit(doc)

    def update_status(
        self,
        kind: str | KindInfo,
        name: str,
        status: dict[str, Any],
        project: str = DEFAULT_PROJECT,
        resource_version: str | None = None,
        *,
        hook: WriteHook | None = None,
    ) -> dict[str, Any]:
        """Replace the status only; spec and generation are untouched. Only the fields that differ from
        the stored status are validated (the rest was when it was written)."""
        info = _kind(kind)
        if not info.has_status:
            validate_status(info, status)  # says so
        with self._write() as conn:
            current = self._load(conn, info, project, name, for_update=True)
            new_status = validate_status(info, status, current.get("status") or {})
            if hook is not None:
                hook(conn, current, {**current, "status": new_status})
            self._check_rv(info, current, resource_version)
            if current.get("status") == new_status:
                return current
            current["status"] = new_status
            rv = self._next_rv(conn)
            result = self._save(conn, current, rv, MODIFIED)
        return result

    def patch(
        self,
        kind: str | KindInfo,
        name: str,
        patch: Any,
        project: str = DEFAULT_PROJECT,
        *,
        status: bool = False,
        hook: WriteHook | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of the object, or of its status when status=True.

        A resourceVersion in the patch's metadata is a precondition, as in Kubernetes.
        """
        info = _kind(kind)
        if not isinstance(patch, dict):
            raise BadRequest("a merge patch must be a JSON object")
        wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
        for attempt in range(5):
            current = self.get(info, name, project)
            try:
                if status:
                    new_status = merge_patch(current.get("status", {}), patch.get("status", {}))
                    return self.update_status(
                        info,
                        name,
                        new_status,
                        project,
                        resource_version=wanted_rv or current["metadata"]["resourceVersion"],
                        hook=hook,
                    )
                patched = merge_patch(current, patch)
                if not isinstance(patched.get("metadata"), dict):
                    raise Invalid("metadata: must stay a mapping")
                patched["metadata"]["name"], patched["metadata"]["project"] = name, project
                patched["metadata"]["resourceVersion"] = wanted_rv or current["metadata"]["resourceVersion"]
                return self.update(patched, hook=hook)
            except Conflict:
                if wanted_rv or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def delete(
        self,
        kind: str | KindInfo,
        name: str,
        project: str = DEFAULT_PROJECT,
        resource_version: str | None = None,
        *,
        hook: WriteHook | None = None,
    ) -> dict[str, Any]:
        """Delete an object; with finalizers it is only marked (deletionTimestamp) until they are gone.

        Objects owned by it (ownerReferences) are deleted with it, the same way.
        """
        info = _kind(kind)
        with self._write() as conn:
            current = self._load(conn, info, project, name, for_update=True)
            if hook is not None:
                hook(conn, current, None)
            self._check_rv(info, current, resource_version)
            for guard in self._delete_guards.get(info.kind, ()):
                guard(conn, current)
            if current["metadata"].get("deletionTimestamp") and current["metadata"].get("finalizers"):
                return current  # already being deleted: nothing changes, no resourceVersion is used
            rv = self._next_rv(conn)
            result = self._delete_one(conn, info, current, rv)
        return result

    def get_secret(self, kind: str | KindInfo, name: str, field: str, project: str = DEFAULT_PROJECT) -> str | None:
        """The decrypted secret field of an object, for controllers; None when unset."""
        info = _kind(kind)
        if field not in info.secret_fields:
            raise BadRequest(f"{info.kind} has no secret field {field!r}")
        obj = self.get(info, name, project)
        with self._engine.connect() as conn:
            row = conn.execute(
                select(secrets.c.ciphertext).where(secrets.c.uid == obj["metadata"]["uid"], secrets.c.field == field)
            ).first()
        if row is None:
            return None
        if self.secret_box is None:
            raise BadRequest("this store was opened without the secret key; cannot read secrets")
        return self.secret_box.decrypt(row[0])

    # --- internals --------------------------------------------------------------------------------------

    def _take_secrets(self, info: KindInfo, obj: dict[str, Any]) -> dict[str, str]:
        """Remove secret fields from the document (before anything is written), returning them."""
        taken: dict[str, str] = {}
        spec = obj.get("spec")
        if not info.secret_fields or not isinstance(spec, dict):
            return taken
        for field in info.secret_fields:
            value = spec.pop(field, None)
            spec.pop(f"{field}Set", None)
            if value is not None:
                if self.secret_box is None:
                    raise BadRequest(f"spec.{field}: this server has no secret key, so it cannot store secrets")
                taken[field] = self.secret_box.encrypt(str(value))
        return taken

    def _store_secrets(
        self,
        conn: Connection,
        info: KindInfo,
        obj: dict[str, Any],
        taken: dict[str, str],
        current_spec: dict[str, Any],
        uid: str | None = None,
    ) -> None:
        if not info.secret_fields:
            return
        uid = uid or obj["metadata"]["uid"]
        for field in info.secret_fields:
            if field in taken:
                conn.execute(delete(secrets).where(secrets.c.uid == uid, secrets.c.field == field))
                conn.execute(insert(secrets).values(uid=uid, field=field, ciphertext=taken[field]))
            obj["spec"][f"{field}Set"] = field in taken or bool(current_spec.get(f"{field}Set"))

    @staticmethod
    def _check_rv(info: KindInfo, current: dict[str, Any], wanted: str | None) -> None:
        have = current["metadata"]["resourceVersion"]
        if wanted and str(wanted) != have:
            meta = current["metadata"]
            raise Conflict(
                f"{info.singular} {meta['name']!r} was changed by someone else (your resourceVersion {wanted}, "
                f"current {have}): get it again and retry",
                {"currentResourceVersion": have},
            )

    def _finish_or_save(self, conn: Connection, info: KindInfo, obj: dict[str, Any], rv: int) -> dict[str, Any]:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(conn, info, obj, rv)
        return self._save(conn, obj, rv, MODIFIED)

    def _delete_one(self, conn: Connection, info: KindInfo, current: dict[str, Any], rv: int) -> dict[str, Any]:
        meta = current["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = isotime(now())
                self._save(conn, current, rv, MODIFIED)
            return current
        return self._remove(conn, info, current, rv)

    def _remove(self, conn: Connection, info: KindInfo, obj: dict[str, Any], rv: int) -> dict[str, Any]:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(rv)
        conn.execute(delete(objects).where(objects.c.uid == meta["uid"]))
        if info.secret_fields:
            conn.execute(delete(secrets).where(secrets.c.uid == meta["uid"]))
        self._log(conn, rv, DELETED, obj, _dumps(obj))
        self._cascade(conn, meta["uid"])
        return obj

    def _cascade(self, conn: Connection, owner_uid: str) -> None:
        rows = conn.execute(select(objects.c.data).where(objects.c.owner_uids.contains(owner_uid))).all()
        for (data,) in rows:
            dependent = orjson.loads(data)
            refs = dependent["metadata"].get("ownerReferences") or []
            if not any(ref["uid"] == owner_uid for ref in refs):
                continue
            dmeta = dependent["metadata"]
            if dmeta.get("deletionTimestamp") and dmeta.get("finalizers"):
                continue  # already marked: waits for its finalizers
            self._delete_one(conn, _kind(dependent["kind"]), dependent, self._next_rv(conn))


def _call(fn: Callable[..., dict[str, Any]], doc: dict[str, Any], hook: WriteHook | None) -> dict[str, Any] | APIError:
    try:
        return fn(doc, hook=hook)
    except APIError as exc:
        return exc


def _sqlite_pragmas(engine: Engine, *, immediate: bool) -> None:
    """WAL for concurrent readers; writers take the write lock up front (BEGIN IMMEDIATE)
    so two processes never deadlock upgrading a read lock."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not immediate and getattr(_SINGLE, "on", False):
            return  # Store._single_statement: autocommit, the statement is its own transaction
        # on the driver connection: SQLAlchemy's statement path cost more than the BEGIN itself
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")  # type: ignore[union-attr]
