"""The agent listener's service endpoints: a DPU agent reads what it should run and reports what runs.

    GET  /agent/v1/services          the DesiredServices of the DPU the client certificate names
    POST /agent/v1/services/status   a ServiceReport: per instance phase / ready / restarts / reason
                                     (into the DPU's DPUAllocation status), and each instance's log tail
                                     (held in memory for `dpufleet service logs`, never in the store)
    POST /agent/v1/services/exec/ID  an ExecResult: what a command handed out in `execs` did

The DPU is named after the certificate's serial, as on the network endpoints (server/agent_network.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..api.agent_services import DesiredServices, ExecResult, ServiceReport
from ..api.errors import NotFound
from ..crypto.pki import AgentIdentity
from ..images.repository import ImageContentError, ImageRepository
from ..inventory.tenancy import ProjectResolver
from ..runtime.events import EventRecorder
from ..services.desired import desired_services
from ..services.reports import record_service_report
from .agent_network import dpu_of_agent
from .common import ServerState, read_model, respond

SERVICES_PATH = "/agent/v1/services"
ARTIFACT_URL_TTL = 3600.0  # an agent asks every few seconds: the URL it is given is always fresh


def offer_images(desired: DesiredServices, repository: ImageRepository | None) -> None:
    """An `image` artifact (`<repository>@sha256:<digest>`) is the OCI archive of that digest in this control
    plane's image repository: each such instance gets a signed URL to it, or the reason it cannot."""
    for instance in desired.instances:
        image = instance.artifact.image
        if image is None:
            continue
        digest = instance.artifact.sha256()
        if repository is None or repository.stat(digest) is None:
            instance.artifactError = (
                f"image {image.reference}: the control plane's image repository holds no content "
                f"sha256:{digest[:16]}...: upload the image's OCI archive (`dpufleet image upload FILE`)"
            )
            continue
        try:
            instance.artifactURL = repository.signed_url(digest, "image.tar", ARTIFACT_URL_TTL)
        except ImageContentError as exc:
            instance.artifactError = f"image {image.reference}: {exc}"


def add_service_routes(
    app: FastAPI, state: ServerState, identify: Callable[[Request], AgentIdentity], resolver: ProjectResolver
) -> None:
    store = state.store
    events = EventRecorder(store, "service-agent-api")
    own_dpu = dpu_of_agent(identify, resolver, "run a DPU's services")

    @app.get(SERVICES_PATH)
    async def services(request: Request) -> Response:
        project, dpu = await asyncio.to_thread(own_dpu, request)
        desired = await state.read(desired_services, store, project, dpu)
        await asyncio.to_thread(offer_images, desired, state.services.repository)
        body = desired.model_dump(mode="json")
        body["execs"] = [e.model_dump(mode="json") for e in state.execs.hand_out(project, dpu)]
        return respond(body)

    @app.post(SERVICES_PATH + "/status")
    async def services_status(request: Request) -> Response:
        project, dpu = await asyncio.to_thread(own_dpu, request)
        report = await read_model(request, ServiceReport, "service status")
        for tail in report.logs:
            state.service_logs[(project, tail.service, dpu)] = tail.lines
        await state.write(record_service_report, store, events, project, dpu, report)
        return respond({"accepted": True})

    @app.post(SERVICES_PATH + "/exec/{exec_id}")
    async def exec_result(exec_id: str, request: Request) -> Response:
        project, dpu = await asyncio.to_thread(own_dpu, request)
        result = await read_model(request, ExecResult, "exec result")
        if not state.execs.resolve(project, dpu, exec_id, result):
            raise NotFound(f"no exec {exec_id!r} waits for DPU {dpu!r} (the command's caller gave up)")
        return respond({"accepted": True})

    _ = (services, services_status, exec_result)
