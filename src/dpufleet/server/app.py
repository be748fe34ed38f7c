"""The HTTP API: CRUD, merge-patch, status subresource and watch for every kind.

Paths follow Kubernetes, with projects in place of namespaces:

    /apis/dpufleet.io/v1alpha1                                   discovery (kinds)
    /apis/dpufleet.io/v1alpha1/{plural}                          list / watch across projects
    /apis/dpufleet.io/v1alpha1/projects/{p}/{plural}             list / watch / create
    /apis/dpufleet.io/v1alpha1/projects/{p}/{plural}/{name}      get / put / patch / delete
    /apis/dpufleet.io/v1alpha1/projects/{p}/{plural}/{name}/status   get / put / patch
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import API_VERSION, __version__
from ..api.errors import APIError, BadRequest, Gone, NotFound, TooLarge, UnsupportedMediaType
from ..api.kinds import REGISTRY, KindInfo
from ..api.meta import DEFAULT_PROJECT
from ..api.selectors import LabelSelector, SelectorError, parse_selector
from ..runtime.metrics import register_metrics as register_controller_metrics
from ..security.audit import AuditLog
from ..security.policy import SubAction, Verb
from ..store.feed import ChangeFeed, WatcherTooSlow
from ..store.store import Store, WriteHook
from .access import Access, Visible
from .auth import Identity, TokenAuthenticator
from .metrics import APIMetrics, MetricsMiddleware

log = logging.getLogger(__name__)
T = TypeVar("T")

BASE = "/apis/dpufleet.io/v1alpha1"
MAX_BODY = 1024 * 1024
MAX_RV = 2**63 - 1  # the database's integer range
BOOKMARK_EVERY = 10.0
BY_PLURAL: dict[str, KindInfo] = {info.plural: info for info in REGISTRY.values()}
Plural = Annotated[str, Path(description="resource type: " + ", ".join(sorted(BY_PLURAL)))]

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A failure: the HTTP code, a stable reason and a message naming the cause (and the field)",
    "required": ["apiVersion", "kind", "status", "code", "reason", "message"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string", "enum": ["Status"]},
        "status": {"type": "string", "enum": ["Failure"]},
        "code": {"type": "integer"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}
_STATUS_REF = {"$ref": "#/components/schemas/Status"}


def document_failures(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI say what the server really answers on failure: a Status body for any 4xx.

    FastAPI documents its own 422 validation body, which this server never sends (request
    validation answers 400 with a Status); every operation may answer 400-404, 409, 410, 413,
    415 or 422, all as a Status. Path parameters naming a resource type list the types served.
    """
    schema.setdefault("components", {}).setdefault("schemas", {})["Status"] = STATUS_SCHEMA
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    schema["components"].setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    failure = {
        "description": "Failure: a Status naming the cause",
        "content": {"application/json": {"schema": _STATUS_REF}},
    }
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("422", None)
            responses["4XX"] = failure
            for param in operation.get("parameters") or []:
                if param.get("name") == "plural" and param.get("in") == "path":
                    param["schema"] = {**param.get("schema", {}), "enum": sorted(BY_PLURAL)}
                if param.get("name") == "watch" and param.get("in") == "query" and "200" in responses:
                    stream = {"schema": {"type": "string", "description": "one JSON watch event per line"}}
                    responses["200"].setdefault("content", {})["application/x-ndjson"] = stream
    return schema


@dataclass
class ServerState:
    store: Store
    auth: TokenAuthenticator
    feed: ChangeFeed
    audit: AuditLog
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ready: bool = False
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # SQLite takes one writer at a time: a single writer thread avoids dozens of threads
    # fighting over the GIL and the write lock. Reads run beside it.
    _writer: ThreadPoolExecutor | None = None
    _reader: ThreadPoolExecutor | None = None
    _batcher: CreateBatcher | None = None

    def __post_init__(self) -> None:
        self._writer = ThreadPoolExecutor(1 if self.store.is_sqlite else 8, thread_name_prefix="store-write")
        self._reader = ThreadPoolExecutor(4, thread_name_prefix="store-read")

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(fn, *args))

    async def create(self, doc: dict[str, Any], hook: WriteHook | None = None) -> dict[str, Any]:
        """Create through the group-commit batcher: concurrent creates share one transaction."""
        if self._batcher is None:
            self._batcher = CreateBatcher(self)
        return await self._batcher.submit(doc, hook)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, functools.partial(fn, *args))


class CreateBatcher:
    """Group commit for creates: while one batch is being written, new creates gather for the next.

    No request waits for a timer: an idle server writes a lone create at once; a busy one
    writes everything that arrived meanwhile in one transaction. Each create is answered
    only after its transaction committed.
    """

    MAX_BATCH = 256

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.pending: list[tuple[dict[str, Any], WriteHook | None, asyncio.Future[dict[str, Any]]]] = []
        self.running = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, doc: dict[str, Any], hook: WriteHook | None = None) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending.append((doc, hook, future))
        if not self.running:
            self.running = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
                try:
                    results = await self.state.write(
                        self.state.store.create_many, [doc for doc, _, _ in batch], [hook for _, hook, _ in batch]
                    )
                except Exception as exc:  # the store failed as a whole: every waiter hears of it
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.running = False


def _json(body: bytes | str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _doc(obj: dict[str, Any], status: int = 200) -> Response:
    return _json(orjson.dumps(obj), status)


async def _read_json(request: Request, *, patch: bool = False) -> Any:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    allowed = ("application/merge-patch+json", "application/json") if patch else ("application/json",)
    if ctype not in allowed:
        raise UnsupportedMediaType(f"Content-Type {ctype!r} is not accepted here; send {' or '.join(allowed)}")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise TooLarge(f"request body is {length} bytes; the limit is {MAX_BODY}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"request body exceeds the limit of {MAX_BODY} bytes")
    if not body.strip():
        raise BadRequest("request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _selector(label_selector: str | None) -> LabelSelector | None:
    if not label_selector:
        return None
    try:
        return parse_selector(label_selector)
    except SelectorError as exc:
        raise BadRequest(str(exc)) from None


def _parse_rv(value: str | None) -> int | None:
    if value in (None, "", "0"):
        return None
    assert value is not None
    if not value.isascii() or not value.isdigit() or int(value) > MAX_RV:
        raise BadRequest(f"resourceVersion {value!r} must be a non-negative integer (at most {MAX_RV})")
    return int(value)


def _check_path_identity(doc: Any, info: KindInfo, project: str, name: str | None) -> None:
    if not isinstance(doc, dict):
        raise BadRequest("a resource must be a JSON object")
    if doc.get("kind", info.kind) != info.kind:
        raise BadRequest(f"kind: the document is a {doc['kind']!r}, but this endpoint serves {info.plural}")
    meta = doc.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise BadRequest("metadata must be an object")
    if meta.get("project", project) != project:
        raise BadRequest(f"metadata.project {meta['project']!r} does not match the project in the path {project!r}")
    meta["project"] = project
    if name is not None:
        if meta.get("name", name) != name:
            raise BadRequest(f"metadata.name {meta['name']!r} does not match the name in the path {name!r}")
        meta["name"] = name
    doc.setdefault("kind", info.kind)


def create_app(state: ServerState) -> FastAPI:
    metrics = APIMetrics(state.registry)
    register_controller_metrics(state.registry)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.feed.start()
        tasks = [asyncio.create_task(start()) for start in state.background]
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.feed.stop()

    app = FastAPI(
        title="dpufleet",
        version=__version__,
        description="Open, vendor-neutral control plane for DPU/IPU fleets",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_failures(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.to_status(), status_code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(BadRequest(f"{where}: {first.get('msg')}").to_status(), status_code=400)

    async def authenticate(request: Request) -> Identity:
        identity = state.auth.authenticate(request.headers.get("authorization"))
        request.state.identity = identity
        request.state.access = Access(identity, state.audit, request.client.host if request.client else "")
        return identity

    def require(action: SubAction) -> Any:
        async def check(request: Request, _identity: Identity = Depends(authenticate)) -> None:
            request.state.access.require(action)

        return Depends(check)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await state.read(state.store.current_rv)
        except Exception as exc:
            return JSONResponse({"status": "store unavailable", "error": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False, dependencies=[require(SubAction.METRICS_READ)])
    async def prometheus() -> Response:
        metrics.watchers.set(state.feed.watchers)
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version", dependencies=[Depends(authenticate)])
    async def version() -> dict[str, str]:
        return {"version": __version__, "apiVersion": API_VERSION}

    api = APIRouter(prefix=BASE, dependencies=[Depends(authenticate)])

    @api.get("", summary="List the kinds this server serves")
    async def discovery() -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kinds": [
                {
                    "kind": i.kind,
                    "plural": i.plural,
                    "singular": i.singular,
                    "shortNames": list(i.short_names),
                    "hasStatus": i.has_status,
                    "columns": [{"header": c.header, "path": c.path, "wide": c.wide_only} for c in i.columns],
                }
                for i in REGISTRY.values()
            ],
        }

    _register_routes(api, state, metrics)
    app.include_router(api)

    from ..inventory.reports import ReportHandler
    from .admin_api import admin_router
    from .agent_api import agent_router
    from .health_api import RedfishEventReceiver, health_router
    from .images_api import images_router

    app.include_router(admin_router(state, [Depends(authenticate)]))
    app.include_router(images_router(state, [Depends(authenticate)]))
    app.include_router(agent_router(state, ReportHandler(state.store), [require(SubAction.AGENT_REPORT)]))
    app.include_router(health_router(state, [Depends(authenticate)]))
    app.add_middleware(RedfishEventReceiver, state=state, metrics=metrics)  # outermost: before the routes
    return app


def _kind_for(plural: str) -> KindInfo:
    info = BY_PLURAL.get(plural)
    if info is None:
        known = ", ".join(sorted(BY_PLURAL))
        raise NotFound(f"unknown resource type {plural!r}; this server serves: {known}")
    return info


def _register_routes(api: APIRouter, state: ServerState, metrics: APIMetrics) -> None:
    """Generic routes over {plural}: a dozen routes for all kinds keeps request routing cheap."""
    store = state.store
    coll = "/projects/{project}/{plural}"
    item = coll + "/{name}"
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}
    patch_doc = {
        "requestBody": {"required": True, "content": {"application/merge-patch+json": {"schema": {"type": "object"}}}}
    }

    def access(request: Request) -> Access:
        result: Access = request.state.access
        return result

    async def mutate(request: Request, info: KindInfo, verb: Verb, project: str, name: str, fn: Any) -> Response:
        """Run a store write with the policy hook; a refused or failed write is audited too."""
        acc = access(request)
        try:
            result = await state.write(fn, acc.hook(info, verb, project, name))
        except APIError as exc:
            await state.write(acc.record_failure, info, verb, project, name, exc)
            raise
        return _doc(result)

    async def list_or_watch(
        request: Request,
        info: KindInfo,
        project: str | None,
        labelSelector: str | None,
        watch: bool,
        resourceVersion: str | None,
    ) -> Response:
        visible = access(request).list_filter(info, Verb.WATCH if watch else Verb.LIST, project)
        selector = _selector(labelSelector)
        since = _parse_rv(resourceVersion)
        if watch:
            if since is not None:
                # fail fast with 410 before the stream starts when history is compacted away
                await state.read(store.changes_since, since, {info.kind}, 1)
            return StreamingResponse(
                _watch_stream(state, info, project, selector, since, metrics, visible),
                media_type="application/x-ndjson",
            )
        raw, rv = await state.read(store.list_raw, info, project, selector)
        if visible is not None:
            raw = [item for item in raw if visible(orjson.loads(item))]
        head = (
            f'{{"apiVersion":"{API_VERSION}","kind":"{info.kind}List","metadata":{{"resourceVersion":"{rv}"}},"items":['
        )
        return _json(head + ",".join(raw) + "]}")

    @api.post(coll, status_code=201, summary="Create an object", openapi_extra=body_doc)
    async def create(project: str, plural: Plural, request: Request) -> Response:
        info = _kind_for(plural)
        doc = await _read_json(request)
        _check_path_identity(doc, info, project, None)
        acc, name = access(request), str(doc["metadata"].get("name") or "")
        try:
            acc.check_create(info, project, doc)  # decided here: a batched create must not refuse in the batch
            created = await state.create(doc, acc.hook(info, Verb.CREATE, project, name))
        except APIError as exc:
            await state.write(acc.record_failure, info, Verb.CREATE, project, name, exc)
            raise
        return _doc(created, 201)

    @api.get("/{plural}", summary="List or watch objects of a kind in all projects")
    async def list_all(
        request: Request,
        plural: Plural,
        labelSelector: str | None = None,
        watch: bool = False,
        resourceVersion: str | None = None,
    ) -> Response:
        return await list_or_watch(request, _kind_for(plural), None, labelSelector, watch, resourceVersion)

    @api.get(coll, summary="List or watch objects of a kind in one project")
    async def list_project(
        request: Request,
        project: str,
        plural: Plural,
        labelSelector: str | None = None,
        watch: bool = False,
        resourceVersion: str | None = None,
    ) -> Response:
        return await list_or_watch(request, _kind_for(plural), project, labelSelector, watch, resourceVersion)

    @api.get(item, summary="Read an object")
    async def get(project: str, plural: Plural, name: str, request: Request) -> Response:
        info = _kind_for(plural)
        obj = await state.read(store.get, info, name, project)
        access(request).check_object(info, Verb.GET, obj)
        return _doc(obj)

    @api.put(item, summary="Replace an object's spec and metadata (status is kept)", openapi_extra=body_doc)
    async def replace(project: str, plural: Plural, name: str, request: Request) -> Response:
        info = _kind_for(plural)
        doc = await _read_json(request)
        _check_path_identity(doc, info, project, name)
        return await mutate(request, info, Verb.UPDATE, project, name, lambda hook: store.update(doc, hook=hook))

    @api.patch(item, summary="Merge-patch an object (RFC 7386)", openapi_extra=patch_doc)
    async def patch(project: str, plural: Plural, name: str, request: Request) -> Response:
        info = _kind_for(plural)
        body = await _read_json(request, patch=True)
        if not access(request).identity.is_admin:  # a merged patch is validated before the hook sees it
            access(request).check_visible(info, await state.read(store.get, info, name, project))
        return await mutate(
            request, info, Verb.PATCH, project, name, lambda hook: store.patch(info, name, body, project, hook=hook)
        )

    @api.delete(item, summary="Delete an object (honours finalizers, cascades to owned objects)")
    async def remove(
        project: str, plural: Plural, name: str, request: Request, resourceVersion: str | None = None
    ) -> Response:
        info = _kind_for(plural)
        return await mutate(
            request,
            info,
            Verb.DELETE,
            project,
            name,
            lambda hook: store.delete(info, name, project, resourceVersion, hook=hook),
        )

    def status_kind(plural: str) -> KindInfo:
        info = _kind_for(plural)
        if not info.has_status:
            raise NotFound(f"{info.plural} have no status subresource")
        return info

    @api.get(item + "/status", summary="Read an object with its status")
    async def get_status(project: str, plural: Plural, name: str, request: Request) -> Response:
        info = status_kind(plural)
        obj = await state.read(store.get, info, name, project)
        access(request).check_object(info, Verb.GET, obj)
        return _doc(obj)

    @api.put(item + "/status", summary="Replace an object's status", openapi_extra=body_doc)
    async def replace_status(project: str, plural: Plural, name: str, request: Request) -> Response:
        info = status_kind(plural)
        doc = await _read_json(request)
        if not isinstance(doc, dict):
            raise BadRequest("body must be a JSON object with a status")
        rv = (doc.get("metadata") or {}).get("resourceVersion")
        status = doc.get("status") or {}
        return await mutate(
            request,
            info,
            Verb.STATUS_UPDATE,
            project,
            name,
            lambda hook: store.update_status(info, name, status, project, rv, hook=hook),
        )

    @api.patch(item + "/status", summary="Merge-patch an object's status", openapi_extra=patch_doc)
    async def patch_status(project: str, plural: Plural, name: str, request: Request) -> Response:
        info = status_kind(plural)
        body = await _read_json(request, patch=True)
        return await mutate(
            request,
            info,
            Verb.STATUS_UPDATE,
            project,
            name,
            lambda hook: store.patch(info, name, body, project, status=True, hook=hook),
        )

    _ = (list_all, list_project, create, get, replace, patch, remove, get_status, replace_status, patch_status)


async def _watch_stream(
    state: ServerState,
    info: KindInfo,
    project: str | None,
    selector: LabelSelector | None,
    since: int | None,
    metrics: APIMetrics,
    visible: Visible | None = None,
) -> AsyncIterator[bytes]:
    """NDJSON events. Without a resourceVersion, the current objects come first as ADDED."""

    def wanted(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if project is not None and meta.get("project") != project:
            return False
        if visible is not None and not visible(obj):
            return False
        return selector is None or selector.matches(meta.get("labels") or {})

    metrics.watchers.inc()
    try:
        if since is None:
            raw, start = await state.read(state.store.list_raw, info, project, selector)
            if visible is not None:
                raw = [item for item in raw if visible(orjson.loads(item))]
            for doc in raw:
                yield b'{"type":"ADDED","object":' + doc.encode() + b"}\n"
        else:
            start = since
        yield _bookmark(start)
        changes = state.feed.changes(frozenset({info.kind}), start).__aiter__()
        last = start
        while True:
            try:
                change = await asyncio.wait_for(changes.__anext__(), BOOKMARK_EVERY)
            except TimeoutError:
                yield _bookmark(last)
                continue
            except StopAsyncIteration:
                return
            last = change.rv
            if (project is None and selector is None and visible is None) or wanted(change.object()):
                yield b'{"type":"' + change.type.encode() + b'","object":' + change.data.encode() + b"}\n"
    except (Gone, WatcherTooSlow) as exc:
        status = Gone(str(exc)).to_status()
        yield orjson.dumps({"type": "ERROR", "object": status}) + b"\n"
    finally:
        metrics.watchers.dec()


def _bookmark(rv: int) -> bytes:
    return orjson.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(rv)}}}) + b"\n"


def build_state(store: Store, auth: TokenAuthenticator) -> ServerState:
    return ServerState(store=store, auth=auth, feed=ChangeFeed(store), audit=AuditLog(store))


__all__ = ["BASE", "DEFAULT_PROJECT", "ServerState", "build_state", "create_app"]
