"""The resource routes: for each kind of the registry, its own list, create, get, replace,
merge-patch, delete, status and watch operations, each documented with the kind's schema.

Paths follow Kubernetes, with projects in place of namespaces:

    {BASE}/{plural}                                   list across projects
    {BASE}/projects/{p}/{plural}                      list / create
    {BASE}/projects/{p}/{plural}/{name}               get / put / patch / delete
    {BASE}/projects/{p}/{plural}/{name}/status        get / put / patch (kinds with a status)
    {BASE}/watch/{plural}, {BASE}/watch/projects/{p}/{plural}   watch (NDJSON, bounded)

Routes are generated from the registry, so a new kind gets them all. Starlette matches routes one
by one, and a dozen per kind would make every request try many patterns: `KindDispatch` is one
route that picks the kind's routes by the plural in the path (a dict lookup), then matches only
those. A path under BASE that no kind serves gets a 404 naming the kinds that are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.params import Depends
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from .. import API_VERSION
from ..api.errors import APIError, BadRequest, NotFound
from ..api.kinds import KindInfo
from ..security.policy import Verb
from . import queries
from .access import Access
from .common import ServerState, json_response, read_json, respond
from .dryrun import dry_run
from .metrics import APIMetrics
from .openapi import body_doc, list_doc, object_doc, watch_doc
from .watch import WatchQuery, watch_stream

BASE = "/apis/dpufleet.io/v1alpha1"
_INNER = "dpufleet.kind_route"  # scope key: the kind's route that KindDispatch matched

LabelSelectorQ = Annotated[str | None, Query(description="label selector, e.g. `rack=r1,tier in (a,b),!retired`")]
FieldSelectorQ = Annotated[
    str | None,
    Query(
        description="field selector: `path=value`, `path==value` or `path!=value` terms joined by commas, "
        "paths into the document (`status.phase=Ready,spec.hostRef=h1`, `metadata.name=d1`)"
    ),
]
LimitQ = Annotated[
    int | None,
    Query(ge=1, le=queries.MAX_LIMIT, description="at most this many objects; `metadata.continue` fetches the rest"),
]
ContinueQ = Annotated[
    str | None,
    Query(alias="continue", description="the `metadata.continue` token of the previous page"),
]
DryRunQ = Annotated[
    str | None,
    Query(
        description="`All`: validate, authorise and admit the write as a real one, answer the object as it "
        "would be stored, and write nothing",
        pattern="^All$",
    ),
]
TimeoutQ = Annotated[
    int,
    Query(
        ge=1,
        le=queries.WATCH_TIMEOUT_MAX,
        description="the stream ends after this many seconds, with a BOOKMARK to resume from",
    ),
]
ResourceVersionQ = Annotated[
    str | None, Query(description="watch changes after this resourceVersion (without: current objects first)")
]
# The list operation still answers `?watch=true` (older clients): not documented, the watch operation is.
HiddenWatch = Annotated[bool, Query(include_in_schema=False)]
HiddenRV = Annotated[str | None, Query(include_in_schema=False)]
HiddenTimeout = Annotated[int, Query(include_in_schema=False, ge=1, le=queries.WATCH_TIMEOUT_MAX)]


def _access(request: Request) -> Access:
    result: Access = request.state.access
    return result


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


class KindRoutes:
    """The operations of one kind, bound to it (no {plural} parameter: each is its own operation)."""

    def __init__(self, info: KindInfo, state: ServerState, metrics: APIMetrics) -> None:
        self.info = info
        self.state = state
        self.store = state.store
        self.metrics = metrics

    # --- reads ----------------------------------------------------------------------------------------

    async def list(
        self,
        request: Request,
        project: str | None,
        label_selector: str | None,
        field_selector: str | None,
        limit: int | None,
        token: str | None,
    ) -> Response:
        info = self.info
        visible = _access(request).list_filter(info, Verb.LIST, project)
        labels = queries.label_selector(label_selector)
        fields = queries.field_selector(field_selector)
        after = queries.decode_continue(token, info, project)
        page = await self.state.read(
            functools.partial(self.store.list_page, limit=limit, after=after), info, project, labels, fields
        )
        raw = page.items
        if visible is not None:
            raw = [item for item in raw if visible(orjson.loads(item))]
        meta: dict[str, str] = {"resourceVersion": str(page.resource_version)}
        if page.next_key is not None:
            meta["continue"] = queries.encode_continue(info, project, page.next_key)
        head = f'{{"apiVersion":"{API_VERSION}","kind":"{info.kind}List","metadata":{orjson.dumps(meta).decode()},"items":['
        return json_response(head + ",".join(raw) + "]}")

    async def watch(
        self,
        request: Request,
        project: str | None,
        label_selector: str | None,
        field_selector: str | None,
        resource_version: str | None,
        timeout: int,
    ) -> Response:
        info = self.info
        visible = _access(request).list_filter(info, Verb.WATCH, project)  # authorisation before any parsing
        query = WatchQuery(
            info,
            project,
            queries.label_selector(label_selector),
            queries.field_selector(field_selector),
            queries.resource_version(resource_version),
            float(timeout),
            visible,
        )
        if query.since is not None:
            # fail fast with 410 before the stream starts when history is compacted away
            await self.state.read(self.store.changes_since, query.since, {info.kind}, 1)
        return StreamingResponse(watch_stream(self.state, query, self.metrics), media_type="application/x-ndjson")

    async def get(self, request: Request, project: str, name: str) -> Response:
        obj = await self.state.read(self.store.get, self.info, name, project)
        _access(request).check_object(self.info, Verb.GET, obj)
        return respond(obj)

    # --- writes ---------------------------------------------------------------------------------------

    async def _mutate(
        self, request: Request, verb: Verb, project: str, name: str, fn: Any, dry: bool, status: int = 200
    ) -> Response:
        """Run a store write with the policy hook; a refused or failed real write is audited too."""
        acc, info = _access(request), self.info
        hook = acc.hook(info, verb, project, name)
        try:
            if dry:
                result = await self.state.write(dry_run, fn, hook)
            else:
                result = await self.state.write(fn, hook)
        except APIError as exc:
            if not dry:
                await self.state.write(acc.record_failure, info, verb, project, name, exc)
            raise
        return respond(result, status)

    async def create(self, request: Request, project: str, dry_run_value: str | None) -> Response:
        info, store = self.info, self.store
        dry = queries.dry_run(dry_run_value)
        doc = await read_json(request)
        _check_path_identity(doc, info, project, None)
        acc, name = _access(request), str(doc["metadata"].get("name") or "")
        if dry:
            acc.check_create(info, project, doc)
            return await self._mutate(
                request, Verb.CREATE, project, name, lambda hook: store.create(doc, hook=hook), True, 201
            )
        try:
            acc.check_create(info, project, doc)  # decided here: a batched create must not refuse in the batch
            created = await self.state.create(doc, acc.hook(info, Verb.CREATE, project, name))
        except APIError as exc:
            await self.state.write(acc.record_failure, info, Verb.CREATE, project, name, exc)
            raise
        return respond(created, 201)

    async def replace(self, request: Request, project: str, name: str, dry_run_value: str | None) -> Response:
        dry = queries.dry_run(dry_run_value)
        doc = await read_json(request)
        _check_path_identity(doc, self.info, project, name)
        store = self.store
        return await self._mutate(request, Verb.UPDATE, project, name, lambda hook: store.update(doc, hook=hook), dry)

    async def patch(self, request: Request, project: str, name: str, dry_run_value: str | None) -> Response:
        info, store = self.info, self.store
        dry = queries.dry_run(dry_run_value)
        body = await read_json(request, patch=True)
        if not _access(request).identity.is_admin:  # a merged patch is validated before the hook sees it
            _access(request).check_visible(info, await self.state.read(store.get, info, name, project))
        return await self._mutate(
            request, Verb.PATCH, project, name, lambda hook: store.patch(info, name, body, project, hook=hook), dry
        )

    async def delete(
        self, request: Request, project: str, name: str, resource_version: str | None, dry_run_value: str | None
    ) -> Response:
        info, store = self.info, self.store
        dry = queries.dry_run(dry_run_value)
        return await self._mutate(
            request,
            Verb.DELETE,
            project,
            name,
            lambda hook: store.delete(info, name, project, resource_version, hook=hook),
            dry,
        )

    async def replace_status(self, request: Request, project: str, name: str, dry_run_value: str | None) -> Response:
        info, store = self.info, self.store
        dry = queries.dry_run(dry_run_value)
        doc = await read_json(request)
        if not isinstance(doc, dict):
            raise BadRequest("body must be a JSON object with a status")
        rv = (doc.get("metadata") or {}).get("resourceVersion")
        status = doc.get("status") or {}
        return await self._mutate(
            request,
            Verb.STATUS_UPDATE,
            project,
            name,
            lambda hook: store.update_status(info, name, status, project, rv, hook=hook),
            dry,
        )

    async def patch_status(self, request: Request, project: str, name: str, dry_run_value: str | None) -> Response:
        info, store = self.info, self.store
        dry = queries.dry_run(dry_run_value)
        body = await read_json(request, patch=True)
        return await self._mutate(
            request,
            Verb.STATUS_UPDATE,
            project,
            name,
            lambda hook: store.patch(info, name, body, project, status=True, hook=hook),
            dry,
        )


def kind_router(info: KindInfo, state: ServerState, metrics: APIMetrics, dependencies: Sequence[Depends]) -> APIRouter:
    """The routes of one kind. Endpoints are small closures over KindRoutes, so each operation has
    its own parameters, operation id and schemas in the OpenAPI document."""
    ops = KindRoutes(info, state, metrics)
    plural, one = info.plural, info.singular
    router = APIRouter(prefix=BASE, dependencies=list(dependencies), tags=[plural])
    coll = f"/projects/{{project}}/{plural}"
    item = coll + "/{name}"
    kind_doc = object_doc(info)

    # the create first: the most frequent write is matched with the fewest patterns tried
    @router.post(
        coll,
        status_code=201,
        operation_id=f"create_{one}",
        summary=f"Create a {info.kind}",
        openapi_extra={**body_doc(info), **object_doc(info, 201)},
    )
    async def create(request: Request, project: str, dryRun: DryRunQ = None) -> Response:
        return await ops.create(request, project, dryRun)

    @router.get(
        coll,
        operation_id=f"list_{plural}",
        summary=f"List {info.kind} objects in a project",
        openapi_extra=list_doc(info),
    )
    async def list_project(
        request: Request,
        project: str,
        labelSelector: LabelSelectorQ = None,
        fieldSelector: FieldSelectorQ = None,
        limit: LimitQ = None,
        continue_: ContinueQ = None,
        watch: HiddenWatch = False,
        resourceVersion: HiddenRV = None,
        timeoutSeconds: HiddenTimeout = queries.WATCH_TIMEOUT_DEFAULT,
    ) -> Response:
        if watch:
            return await ops.watch(request, project, labelSelector, fieldSelector, resourceVersion, timeoutSeconds)
        return await ops.list(request, project, labelSelector, fieldSelector, limit, continue_)

    @router.get(
        f"/{plural}",
        operation_id=f"list_{plural}_in_all_projects",
        summary=f"List {info.kind} objects in all projects",
        openapi_extra=list_doc(info),
    )
    async def list_all(
        request: Request,
        labelSelector: LabelSelectorQ = None,
        fieldSelector: FieldSelectorQ = None,
        limit: LimitQ = None,
        continue_: ContinueQ = None,
        watch: HiddenWatch = False,
        resourceVersion: HiddenRV = None,
        timeoutSeconds: HiddenTimeout = queries.WATCH_TIMEOUT_DEFAULT,
    ) -> Response:
        if watch:
            return await ops.watch(request, None, labelSelector, fieldSelector, resourceVersion, timeoutSeconds)
        return await ops.list(request, None, labelSelector, fieldSelector, limit, continue_)

    @router.get(item, operation_id=f"read_{one}", summary=f"Read a {info.kind}", openapi_extra=kind_doc)
    async def get(request: Request, project: str, name: str) -> Response:
        return await ops.get(request, project, name)

    @router.put(
        item,
        operation_id=f"replace_{one}",
        summary=f"Replace a {info.kind}'s spec and metadata (its status is kept)",
        openapi_extra={**body_doc(info), **kind_doc},
    )
    async def replace(request: Request, project: str, name: str, dryRun: DryRunQ = None) -> Response:
        return await ops.replace(request, project, name, dryRun)

    @router.patch(
        item,
        operation_id=f"patch_{one}",
        summary=f"Merge-patch a {info.kind} (RFC 7386)",
        openapi_extra={**body_doc(info, patch=True), **kind_doc},
    )
    async def patch(request: Request, project: str, name: str, dryRun: DryRunQ = None) -> Response:
        return await ops.patch(request, project, name, dryRun)

    @router.delete(
        item,
        operation_id=f"delete_{one}",
        summary=f"Delete a {info.kind} (honours finalizers, cascades to owned objects)",
        openapi_extra=kind_doc,
    )
    async def delete(
        request: Request,
        project: str,
        name: str,
        resourceVersion: Annotated[str | None, Query(description="delete only at this resourceVersion")] = None,
        dryRun: DryRunQ = None,
    ) -> Response:
        return await ops.delete(request, project, name, resourceVersion, dryRun)

    if info.has_status:

        @router.get(
            item + "/status",
            operation_id=f"read_{one}_status",
            summary=f"Read a {info.kind} with its status",
            openapi_extra=kind_doc,
        )
        async def get_status(request: Request, project: str, name: str) -> Response:
            return await ops.get(request, project, name)

        @router.put(
            item + "/status",
            operation_id=f"replace_{one}_status",
            summary=f"Replace a {info.kind}'s status",
            openapi_extra={**body_doc(info, status=True), **kind_doc},
        )
        async def replace_status(request: Request, project: str, name: str, dryRun: DryRunQ = None) -> Response:
            return await ops.replace_status(request, project, name, dryRun)

        @router.patch(
            item + "/status",
            operation_id=f"patch_{one}_status",
            summary=f"Merge-patch a {info.kind}'s status",
            openapi_extra={**body_doc(info, patch=True, status=True), **kind_doc},
        )
        async def patch_status(request: Request, project: str, name: str, dryRun: DryRunQ = None) -> Response:
            return await ops.patch_status(request, project, name, dryRun)

    @router.get(
        f"/watch{coll}",
        operation_id=f"watch_{plural}",
        summary=f"Watch {info.kind} objects in a project (NDJSON, ends after timeoutSeconds)",
        openapi_extra=watch_doc(info),
    )
    async def watch_project(
        request: Request,
        project: str,
        labelSelector: LabelSelectorQ = None,
        fieldSelector: FieldSelectorQ = None,
        resourceVersion: ResourceVersionQ = None,
        timeoutSeconds: TimeoutQ = queries.WATCH_TIMEOUT_DEFAULT,
    ) -> Response:
        return await ops.watch(request, project, labelSelector, fieldSelector, resourceVersion, timeoutSeconds)

    @router.get(
        f"/watch/{plural}",
        operation_id=f"watch_{plural}_in_all_projects",
        summary=f"Watch {info.kind} objects in all projects (NDJSON, ends after timeoutSeconds)",
        openapi_extra=watch_doc(info),
    )
    async def watch_all(
        request: Request,
        labelSelector: LabelSelectorQ = None,
        fieldSelector: FieldSelectorQ = None,
        resourceVersion: ResourceVersionQ = None,
        timeoutSeconds: TimeoutQ = queries.WATCH_TIMEOUT_DEFAULT,
    ) -> Response:
        return await ops.watch(request, None, labelSelector, fieldSelector, resourceVersion, timeoutSeconds)

    return router


def _plural_of(path: str) -> str | None:
    """The plural a path under BASE names: {plural}, projects/{p}/{plural}/..., watch/...."""
    parts = path.split("/", 4)
    if parts and parts[0] == "watch":
        parts = parts[1:]
    if not parts or not parts[0]:
        return None
    if parts[0] == "projects" and len(parts) >= 3:
        return parts[2]
    return parts[0] if len(parts) == 1 else None


class KindDispatch(BaseRoute):
    """One route for every kind's operations: picks the kind by the path's plural, then matches only
    its routes. Paths under BASE that no kind serves go to `fallback` (a 404 naming the kinds)."""

    def __init__(self, routes: dict[str, list[APIRoute]], fallback: APIRoute) -> None:
        self.by_plural = routes
        self.fallback = fallback
        self.prefix = BASE + "/"

    @property
    def routes(self) -> list[APIRoute]:
        return [route for routes in self.by_plural.values() for route in routes]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if not path.startswith(self.prefix):
            return Match.NONE, {}
        plural = _plural_of(path[len(self.prefix) :])
        partial: tuple[APIRoute, Scope] | None = None
        for route in self.by_plural.get(plural or "", ()):
            match, child = route.matches(scope)
            if match is Match.FULL:
                return Match.FULL, {**child, _INNER: route}
            if match is Match.PARTIAL and partial is None:
                partial = (route, child)
        if partial is not None:  # the path is served, not with this method: 405 as any route answers
            return Match.PARTIAL, {**partial[1], _INNER: partial[0]}
        match, child = self.fallback.matches(scope)
        return match, {**child, _INNER: self.fallback}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: APIRoute = scope[_INNER]
        scope["route"] = route
        await route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                continue
        raise NoMatchFound(name, path_params)


def resource_routes(
    kinds: Sequence[KindInfo], state: ServerState, metrics: APIMetrics, dependencies: Sequence[Depends]
) -> KindDispatch:
    """Every kind's routes behind one KindDispatch (its `routes` go into the OpenAPI document)."""
    by_plural: dict[str, list[APIRoute]] = {}
    for info in kinds:
        router = kind_router(info, state, metrics, dependencies)
        by_plural[info.plural] = [route for route in router.routes if isinstance(route, APIRoute)]
    served = ", ".join(sorted(by_plural))

    fallback_router = APIRouter(prefix=BASE, dependencies=list(dependencies))

    @fallback_router.api_route(
        "/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    async def unknown(rest: str) -> Response:
        plural = _plural_of(rest)
        if plural in by_plural:
            raise NotFound(f"no such path under {plural}: {BASE}/{rest}")
        raise NotFound(f"unknown resource type {plural or rest!r}; this server serves: {served}")

    fallback = next(route for route in fallback_router.routes if isinstance(route, APIRoute))
    _: Callable[..., Any] = unknown
    return KindDispatch(by_plural, fallback)
