"""The API server: the application, its authentication, probes and metrics, and the routers.

The resource routes (one set per kind, generated from the kind registry) are in resources.py; the
OpenAPI document's schemas in openapi.py; what the routers share in common.py. This module imports
the routers and nothing of server/ imports it, so server/ has no import cycle.

    /apis/dpufleet.io/v1alpha1                       discovery (kinds)
    /apis/dpufleet.io/v1alpha1/...                   the resources (resources.py)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import API_VERSION, __version__
from ..api.errors import APIError, BadRequest
from ..api.kinds import REGISTRY
from ..api.meta import DEFAULT_PROJECT
from ..inventory.reports import ReportHandler
from ..runtime.metrics import register_metrics as register_controller_metrics
from ..security.policy import SubAction
from .access import Access
from .admin_api import admin_router
from .agent_api import agent_router
from .auth import Identity
from .common import ServerState
from .health_api import RedfishEventReceiver, health_router
from .images_api import images_router
from .metrics import APIMetrics, MetricsMiddleware, merge_expositions
from .openapi import document_failures
from .resources import BASE, resource_routes
from .services_api import services_router
from .telemetry import telemetry_router

log = logging.getLogger(__name__)


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
            routes = [*app.routes, *dispatch.routes]
            app.openapi_schema = document_failures(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=routes),
                kinds,
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
        if state.controllers_status is not None:  # the API is ready whatever the controller process does
            return JSONResponse({"status": "ready", "controllers": state.controllers_status()})
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False, dependencies=[require(SubAction.METRICS_READ)])
    async def prometheus() -> Response:
        metrics.watchers.set(state.feed.watchers)
        # the controller process's first (server/controllers.py): this process's metrics of it say how it answered
        more = await state.more_metrics() if state.more_metrics is not None else ""
        text = generate_latest(state.registry)
        if more:
            text = merge_expositions(text.decode(), more)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/version", dependencies=[Depends(authenticate)])
    async def version() -> dict[str, str]:
        return {"version": __version__, "apiVersion": API_VERSION}

    kinds = list(REGISTRY.values())  # read when the app is made: kinds registered by then are served
    dispatch = resource_routes(kinds, state, metrics, [Depends(authenticate)])
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
                for i in kinds
            ],
        }

    app.include_router(api)
    app.router.routes.append(dispatch)  # after discovery; before the other routers (none is under BASE)

    app.include_router(admin_router(state, [Depends(authenticate)]))
    app.include_router(images_router(state, [Depends(authenticate)]))
    app.include_router(agent_router(state, ReportHandler(state.store), [require(SubAction.AGENT_REPORT)]))
    app.include_router(health_router(state, [Depends(authenticate)]))
    app.include_router(services_router(state, [Depends(authenticate)]))
    if state.telemetry is not None:
        app.include_router(telemetry_router(state.telemetry, [Depends(authenticate)]))
    app.add_middleware(RedfishEventReceiver, state=state, metrics=metrics)  # outermost: before the routes
    return app


__all__ = ["BASE", "DEFAULT_PROJECT", "create_app"]
