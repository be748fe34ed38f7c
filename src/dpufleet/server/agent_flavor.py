"""The agent listener's flavor endpoints: a DPU agent reads the flavor its OS should carry and reports it.

GET  /agent/v1/flavor          the DesiredFlavor of the DPU the client certificate names
POST /agent/v1/flavor/status   a FlavorReport: applied or not and why, what waits for a reboot, and the
                                drift it undid (each a Warning Event on the DPU)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..api.agent_flavor import FlavorReport
from ..crypto.pki import AgentIdentity
from ..inventory.tenancy import ProjectResolver
from ..provisioning.flavor_agent import desired_flavor, record_flavor_report
from ..runtime.events import EventRecorder
from .agent_network import dpu_of_agent
from .common import ServerState, read_model, respond

FLAVOR_PATH = "/agent/v1/flavor"


def add_flavor_routes(
    app: FastAPI, state: ServerState, identify: Callable[[Request], AgentIdentity], resolver: ProjectResolver
) -> None:
    store = state.store
    events = EventRecorder(store, "flavor-agent-api")
    own_dpu = dpu_of_agent(identify, resolver, "apply a DPU's flavor")

    @app.get(FLAVOR_PATH)
    async def flavor(request: Request) -> Response:
        project, dpu = await asyncio.to_thread(own_dpu, request)
        desired = await asyncio.to_thread(desired_flavor, store, project, dpu)
        return respond(desired.model_dump(mode="json"))

    @app.post(FLAVOR_PATH + "/status")
    async def flavor_status(request: Request) -> Response:
        project, dpu = await asyncio.to_thread(own_dpu, request)
        report = await read_model(request, FlavorReport, "flavor status")
        await state.write(record_flavor_report, store, events, project, dpu, report)
        return respond({"accepted": True})

    _ = (flavor, flavor_status)
