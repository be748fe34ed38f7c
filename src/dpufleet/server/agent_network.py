"""The agent listener's network endpoints: a DPU agent reads its desired network and reports what it made.

    GET  /agent/v1/network          the DesiredNetwork of the DPU the client certificate names
    POST /agent/v1/network/status   a NetworkReport: per chain programmed / flows / last error, and the
                                     drift it repaired (each an Event on the repaired object)

The DPU is named after the certificate's serial, never after anything in the request, and looked up in
the project it is in (inventory/tenancy.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..api.agent_network import NetworkReport
from ..api.errors import Forbidden, NotFound
from ..api.naming import dpu_name
from ..crypto.pki import AgentIdentity
from ..inventory.tenancy import ProjectResolver
from ..network.desired import desired_network
from ..network.reports import record_network_report
from ..runtime.events import EventRecorder
from .common import ServerState, read_model, respond

NETWORK_PATH = "/agent/v1/network"


def dpu_of_agent(
    identify: Callable[[Request], AgentIdentity], resolver: ProjectResolver, what: str
) -> Callable[[Request], tuple[str, str]]:
    """(project, DPU) of the DPU agent whose certificate the request carries; only DPU agents may `what`."""

    def own_dpu(request: Request) -> tuple[str, str]:
        identity = identify(request)
        if identity.role != "dpu":
            raise Forbidden(f"{identity} is not a DPU agent: only DPU agents {what}")
        project = resolver.known_dpu(identity.serial)
        if project is None:
            raise NotFound(f"no DPU {dpu_name(identity.serial)}: the agent reports inventory first")
        return project, dpu_name(identity.serial)

    return own_dpu


def add_network_routes(
    app: FastAPI, state: ServerState, identify: Callable[[Request], AgentIdentity], resolver: ProjectResolver
) -> None:
    store = state.store
    events = EventRecorder(store, "network-agent-api")
    own_dpu = dpu_of_agent(identify, resolver, "program a DPU's data plane")

    @app.get(NETWORK_PATH)
    async def network(request: Request) -> Response:
        project, dpu = await asyncio.to_thread(own_dpu, request)
        desired = await asyncio.to_thread(desired_network, store, project, dpu)
        return respond(desired.model_dump(mode="json"))

    @app.post(NETWORK_PATH + "/status")
    async def network_status(request: Request) -> Response:
        project, dpu = await asyncio.to_thread(own_dpu, request)
        report = await read_model(request, NetworkReport, "network status")
        await state.write(record_network_report, store, events, project, dpu, report)
        return respond({"accepted": True})

    _ = (network, network_status)
