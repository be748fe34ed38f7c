"""The agent protocol endpoint: agents report inventory and heartbeats here.

POST /agent/v1/report with an AgentReport; the reply tells the agent how often
to heartbeat and re-inventory. The security baseline moves this onto mTLS,
where the client certificate must name the serial the report speaks for.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..api.errors import Invalid
from ..api.validation import describe_errors
from ..inventory.reports import AgentReport, ReportHandler
from .common import ServerState, read_json, respond

AGENT_PREFIX = "/agent/v1"


def agent_router(state: ServerState, handler: ReportHandler, dependencies: list[Any]) -> APIRouter:
    router = APIRouter(prefix=AGENT_PREFIX, dependencies=dependencies, tags=["agent"])

    @router.post("/report", summary="An agent's inventory or heartbeat")
    async def report(request: Request) -> Response:
        body = await read_json(request)
        try:
            parsed = AgentReport.model_validate(body)
        except ValidationError as exc:
            summary, causes = describe_errors(exc)
            raise Invalid(f"agent report is invalid: {summary}", {"causes": causes}) from None
        reply = handler.reply_without_write(parsed)  # a heartbeat not due to be stored: no queue behind the writer
        if reply is None:
            reply = await state.write(handler.handle, parsed)
        return respond(reply.model_dump())

    _ = report
    return router
