"""Service routes: the last lines each instance of a DPUService wrote, as its DPU's runtime sent them.

    GET /services/v1/projects/{project}/dpuservices/{name}/logs[?dpu=NAME]
        {"service": NAME, "instances": [{"dpu": ..., "lines": [...]}, ...]}

Whoever may read the DPUService may read its logs. The tails live in the API server's memory
(server/agent_services.py keeps the latest per instance); they are not stored: a restarted server
shows them again after each DPU's next report (every few seconds while the log grows).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..api.kinds.registry import lookup
from ..security.policy import Verb
from .access import Access
from .common import ServerState, respond


def services_router(state: ServerState, dependencies: list[Any]) -> APIRouter:
    router = APIRouter(dependencies=dependencies, tags=["services"])
    info = lookup("DPUService")

    @router.get("/services/v1/projects/{project}/dpuservices/{name}/logs", summary="Each instance's last log lines")
    async def logs(project: str, name: str, request: Request, dpu: str | None = None) -> Response:
        acc: Access = request.state.access
        doc = await state.read(state.store.get, "DPUService", name, project)
        acc.check_object(info, Verb.GET, doc)
        instances = [
            {"dpu": where, "lines": lines}
            for (p, service, where), lines in sorted(state.service_logs.items())
            if p == project and service == name and (dpu is None or where == dpu)
        ]
        return respond({"service": name, "instances": instances})

    _ = logs
    return router
