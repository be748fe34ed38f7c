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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from .. import API_VERSION, __version__
from ..api.errors import APIError, BadRequest, Gone, TooLarge, UnsupportedMediaType
from ..api.kinds import REGISTRY, KindInfo
from ..api.meta import DEFAULT_PROJECT
from ..api.selectors import LabelSelector, SelectorError, parse_selector
from ..store.feed import ChangeFeed, WatcherTooSlow
from ..store.store import Store
from .auth import Identity, TokenAuthenticator
from .metrics import APIMetrics, MetricsMiddleware

log = logging.getLogger(__name__)

BASE = "/apis/dpufleet.io/v1alpha1"
MAX_BODY = 1024 * 1024
BOOKMARK_EVERY = 10.0


@dataclass
class ServerState:
    store: Store
    auth: TokenAuthenticator
    feed: ChangeFeed
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ready: bool = False
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


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
    if not value.isdigit():
        raise BadRequest(f"resourceVersion {value!r} must be a non-negative integer")
    return int(value)


def _check_path_identity(doc: Any, info: KindInfo, project: str, name: str | None) -> None:
    if not isinstance(doc, dict):
        raise BadRequest("a resource must be a JSON object")
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
        return identity

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await run_in_threadpool(state.store.current_rv)
        except Exception as exc:
            return JSONResponse({"status": "store unavailable", "error": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(authenticate)])
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

    for info in REGISTRY.values():
        _register_kind(api, state, info, metrics)
    app.include_router(api)
    return app


def _register_kind(api: APIRouter, state: ServerState, info: KindInfo, metrics: APIMetrics) -> None:
    store = state.store
    coll = f"/projects/{{project}}/{info.plural}"
    item = f"{coll}/{{name}}"
    tag = [info.kind]

    async def list_or_watch(
        project: str | None,
        labelSelector: str | None,
        watch: bool,
        resourceVersion: str | None,
    ) -> Response:
        selector = _selector(labelSelector)
        since = _parse_rv(resourceVersion)
        if watch:
            if since is not None:
                # fail fast with 410 before the stream starts when history is compacted away
                await run_in_threadpool(store.changes_since, since, {info.kind}, 1)
            return StreamingResponse(
                _watch_stream(state, info, project, selector, since, metrics),
                media_type="application/x-ndjson",
            )
        raw, rv = await run_in_threadpool(store.list_raw, info, project, selector)
        head = (
            f'{{"apiVersion":"{API_VERSION}","kind":"{info.kind}List","metadata":{{"resourceVersion":"{rv}"}},"items":['
        )
        return _json(head + ",".join(raw) + "]}")

    @api.get(f"/{info.plural}", tags=tag, summary=f"List or watch {info.plural} in all projects")
    async def list_all(
        labelSelector: str | None = None, watch: bool = False, resourceVersion: str | None = None
    ) -> Response:
        return await list_or_watch(None, labelSelector, watch, resourceVersion)

    @api.get(coll, tags=tag, summary=f"List or watch {info.plural} in a project")
    async def list_project(
        project: str, labelSelector: str | None = None, watch: bool = False, resourceVersion: str | None = None
    ) -> Response:
        return await list_or_watch(project, labelSelector, watch, resourceVersion)

    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}
    patch_doc = {
        "requestBody": {"required": True, "content": {"application/merge-patch+json": {"schema": {"type": "object"}}}}
    }

    @api.post(coll, tags=tag, status_code=201, summary=f"Create a {info.kind}", openapi_extra=body_doc)
    async def create(project: str, request: Request) -> Response:
        doc = await _read_json(request)
        _check_path_identity(doc, info, project, None)
        return _doc(await run_in_threadpool(store.create, doc), 201)

    @api.get(item, tags=tag, summary=f"Read a {info.kind}")
    async def get(project: str, name: str) -> Response:
        return _doc(await run_in_threadpool(store.get, info, name, project))

    @api.put(item, tags=tag, summary=f"Replace a {info.kind}'s spec and metadata", openapi_extra=body_doc)
    async def replace(project: str, name: str, request: Request) -> Response:
        doc = await _read_json(request)
        _check_path_identity(doc, info, project, name)
        return _doc(await run_in_threadpool(store.update, doc))

    @api.patch(item, tags=tag, summary=f"Merge-patch a {info.kind} (RFC 7386)", openapi_extra=patch_doc)
    async def patch(project: str, name: str, request: Request) -> Response:
        body = await _read_json(request, patch=True)
        return _doc(await run_in_threadpool(store.patch, info, name, body, project))

    @api.delete(item, tags=tag, summary=f"Delete a {info.kind} (honours finalizers, cascades to owned objects)")
    async def remove(project: str, name: str, resourceVersion: str | None = None) -> Response:
        return _doc(await run_in_threadpool(store.delete, info, name, project, resourceVersion))

    if not info.has_status:
        return

    @api.get(f"{item}/status", tags=tag, summary=f"Read a {info.kind} with its status")
    async def get_status(project: str, name: str) -> Response:
        return _doc(await run_in_threadpool(store.get, info, name, project))

    @api.put(f"{item}/status", tags=tag, summary=f"Replace a {info.kind}'s status", openapi_extra=body_doc)
    async def replace_status(project: str, name: str, request: Request) -> Response:
        doc = await _read_json(request)
        if not isinstance(doc, dict):
            raise BadRequest("body must be a JSON object with a status")
        rv = (doc.get("metadata") or {}).get("resourceVersion")
        return _doc(await run_in_threadpool(store.update_status, info, name, doc.get("status") or {}, project, rv))

    @api.patch(f"{item}/status", tags=tag, summary=f"Merge-patch a {info.kind}'s status", openapi_extra=patch_doc)
    async def patch_status(project: str, name: str, request: Request) -> Response:
        body = await _read_json(request, patch=True)
        return _doc(await run_in_threadpool(lambda: store.patch(info, name, body, project, status=True)))

    _ = (list_all, list_project, create, get, replace, patch, remove, get_status, replace_status, patch_status)


async def _watch_stream(
    state: ServerState,
    info: KindInfo,
    project: str | None,
    selector: LabelSelector | None,
    since: int | None,
    metrics: APIMetrics,
) -> AsyncIterator[bytes]:
    """NDJSON events. Without a resourceVersion, the current objects come first as ADDED."""

    def wanted(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if project is not None and meta.get("project") != project:
            return False
        return selector is None or selector.matches(meta.get("labels") or {})

    metrics.watchers.inc()
    try:
        if since is None:
            raw, since = await run_in_threadpool(state.store.list_raw, info, project, selector)
            for doc in raw:
                yield b'{"type":"ADDED","object":' + doc.encode() + b"}\n"
        yield _bookmark(since)
        changes = state.feed.changes(frozenset({info.kind}), since).__aiter__()
        last = since
        while True:
            try:
                change = await asyncio.wait_for(changes.__anext__(), BOOKMARK_EVERY)
            except TimeoutError:
                yield _bookmark(last)
                continue
            except StopAsyncIteration:
                return
            last = change.rv
            if (project is None and selector is None) or wanted(change.object()):
                yield b'{"type":"' + change.type.encode() + b'","object":' + change.data.encode() + b"}\n"
    except (Gone, WatcherTooSlow) as exc:
        status = Gone(str(exc)).to_status()
        yield orjson.dumps({"type": "ERROR", "object": status}) + b"\n"
    finally:
        metrics.watchers.dec()


def _bookmark(rv: int) -> bytes:
    return orjson.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(rv)}}}) + b"\n"


def build_state(store: Store, auth: TokenAuthenticator) -> ServerState:
    return ServerState(store=store, auth=auth, feed=ChangeFeed(store))


__all__ = ["BASE", "DEFAULT_PROJECT", "ServerState", "build_state", "create_app"]
