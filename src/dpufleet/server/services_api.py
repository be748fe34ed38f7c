"""Service routes: the last lines each instance of a DPUService wrote, and a command run inside one.

    GET  /services/v1/projects/{project}/dpuservices/{name}/logs[?dpu=NAME]
        {"service": NAME, "instances": [{"dpu": ..., "lines": [...]}, ...]}
    POST /services/v1/projects/{project}/dpuservices/{name}/exec
        {"dpu": NAME?, "command": [...], "timeoutSeconds": 30} -> {"dpu": ..., "exitCode": ..., "output": ...}

Whoever may read the DPUService may read its logs. The tails live in the API server's memory
(server/agent_services.py keeps the latest per instance); they are not stored: a restarted server
shows them again after each DPU's next report (every few seconds while the log grows).

An exec needs what changing the service needs (update on it, and the privileged-service right for a
privileged one: a command in a host-network container with every capability is the host's), and is
audited (who, which instance, which program) before it runs. It waits
for the DPU's agent to ask for its desired services (server/execs.py), runs once inside the instance's
container, and answers with the exit status and output; an agent that does not answer in time is a
504 that says whether the command may have run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ..api.agent_services import EXEC_TIMEOUT_MAX
from ..api.errors import BadRequest, Timeout
from ..api.kinds.registry import lookup
from ..security.policy import SubAction, Verb
from .access import Access
from .common import ServerState, read_model, respond

AGENT_ASKS_EVERY = 2.0  # agent/services.py ServicesConfig.interval: the longest an exec waits to be handed out
EXEC_MARGIN = 10.0


class ExecCall(BaseModel):
    """`dpufleet service exec`: a command to run once in one instance of the service."""

    dpu: str | None = Field(default=None, description="the instance's DPU (needed when it has several)")
    command: list[str] = Field(min_length=1, max_length=64)
    timeoutSeconds: float = Field(default=30.0, gt=0, le=EXEC_TIMEOUT_MAX)


def exec_target(doc: dict[str, Any], dpu: str | None) -> str:
    """The DPU whose instance runs the command: the one asked for, or the service's only one."""
    name = doc["metadata"]["name"]
    placed = sorted({str(i["dpu"]) for i in (doc.get("status") or {}).get("instances") or [] if i.get("dpu")})
    if dpu is not None:
        if dpu not in placed:
            where = ", ".join(placed) if placed else "none"
            raise BadRequest(f"dpu: dpuservice/{name} has no instance on DPU {dpu!r} (its instances' DPUs: {where})")
        return dpu
    if not placed:
        raise BadRequest(f"dpuservice/{name} has no instance placed yet (see `dpufleet get svc {name}`)")
    if len(placed) > 1:
        shown = ", ".join(placed[:10]) + (f" and {len(placed) - 10} more" if len(placed) > 10 else "")
        raise BadRequest(f"dpu: dpuservice/{name} has {len(placed)} instances; name one with --dpu ({shown})")
    return placed[0]


def services_router(state: ServerState, dependencies: list[Any]) -> APIRouter:
    router = APIRouter(dependencies=dependencies, tags=["services"])
    info = lookup("DPUService")

    @router.get("/services/v1/projects/{project}/dpuservices/{name}/logs", summary="Each instance's last log lines")
    async def logs(project: str, name: str, request: Request, dpu: str | None = None) -> Response:
        acc: Access = request.state.access
        doc = await state.read(state.store.get, "DPUService", name, project)
        acc.check_object(info, Verb.GET, doc)
        instances = [
            {"dpu": on, "runsOn": where, "lines": by_service[name]}
            for (p, on, where), by_service in sorted(state.service_logs.items())
            if p == project and name in by_service and (dpu is None or on == dpu)
        ]
        if dpu is not None and not instances:
            exec_target(doc, dpu)  # a DPU the service has no instance on is named as such, not shown as silent
        return respond({"service": name, "instances": instances})

    @router.post("/services/v1/projects/{project}/dpuservices/{name}/exec", summary="Run a command in one instance")
    async def exec_command(project: str, name: str, request: Request) -> Response:
        acc: Access = request.state.access
        call = await read_model(request, ExecCall, "exec")
        doc = await state.read(state.store.get, "DPUService", name, project)
        acc.check_object(info, Verb.UPDATE, doc)
        if (doc.get("spec") or {}).get("privileged"):
            acc.require(SubAction.PRIVILEGED_SERVICE, project)
        dpu = exec_target(doc, call.dpu)
        # audited before it runs; the program's name only (arguments may carry secrets)
        detail = f"dpu={dpu} program={call.command[0][:200]}"
        await state.write(lambda: acc.record("service-exec", "DPUService", name, project, detail=detail))
        exec_id, future = state.execs.submit(project, dpu, name, call.command, call.timeoutSeconds)
        wait = call.timeoutSeconds + AGENT_ASKS_EVERY + EXEC_MARGIN
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), wait)
        except TimeoutError:
            if state.execs.forget(exec_id):
                raise Timeout(
                    f"DPU {dpu!r}'s agent did not ask for its services within {wait:g}s; the command did not run"
                ) from None
            raise Timeout(
                f"DPU {dpu!r}'s agent took the command but sent no result within {wait:g}s; it may have run"
            ) from None
        finally:
            state.execs.forget(exec_id)
        return respond({"dpu": dpu, **result.model_dump(mode="json")})

    _ = (logs, exec_command)
    return router
