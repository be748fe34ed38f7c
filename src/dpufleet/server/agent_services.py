"""The agent listener's service endpoints: a DPU agent reads what it should run and reports what runs.

    GET  /agent/v1/services          the DesiredServices of the DPU the client certificate names
    POST /agent/v1/services/status   a ServiceReport: per instance phase / ready / restarts / reason
                                     (into the DPU's DPUAllocation status), and each instance's log tail
                                     (held in memory for `dpufleet service logs`, never in the store)
    POST /agent/v1/services/exec/ID  an ExecResult: what a command handed out in `execs` did
    PUT  /agent/v1/services/state/SERVICE?sha256=HEX
                                     the state a moving instance exported (its DesiredInstance.stateTo),
                                     at most the service's handoff.maxStateMiB, into the image repository;
                                     its replacement is offered a signed URL to it (`stateURL`)

The DPU is named after the certificate's serial, as on the network endpoints (server/agent_network.py).
A host agent runs the instances placed on its host (placement.runsOn Host) for each DPU its host carries:
it names the DPU (`?dpu=NAME`), which must be one whose status.host is the host its certificate names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..api.agent_services import DesiredServices, ExecResult, ServiceReport
from ..api.errors import BadRequest, Conflict, Forbidden, NotFound, TooLarge
from ..crypto.pki import AgentIdentity
from ..images.repository import ImageContentError, ImageRepository, check_digest
from ..inventory.tenancy import ProjectResolver
from ..runtime.events import EventRecorder
from ..services.desired import desired_services
from ..services.reports import record_service_report
from ..store.store import Store
from .agent_network import dpu_of_agent
from .common import ServerState, body_chunks, read_model, respond

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


def offer_states(desired: DesiredServices, repository: ImageRepository | None) -> None:
    """An instance that starts with the state its predecessor on another DPU exported: a signed URL to it."""
    for instance in desired.instances:
        if instance.stateSha256 is None or repository is None or repository.stat(instance.stateSha256) is None:
            continue
        with contextlib.suppress(ImageContentError):  # no public URL: it waits, as for an image artifact
            instance.stateURL = repository.signed_url(instance.stateSha256, "state", ARTIFACT_URL_TTL)


def state_limit(store: Store, project: str, dpu: str, service: str) -> int:
    """How much state the DPU's instance of the service may hand on: its handoff.maxStateMiB, in bytes, while
    its allocation says its state goes elsewhere (a move); Conflict otherwise."""
    try:
        allocation = store.get("DPUAllocation", dpu, project)
        doc = store.get("DPUService", service, project)
    except NotFound:
        raise Conflict(f"dpuservice/{service} has no instance on dpu/{dpu} whose state moves") from None
    placed = (allocation.get("spec") or {}).get("instances") or []
    if not any(i.get("service") == service and i.get("stateTo") for i in placed):
        raise Conflict(f"dpuservice/{service}: its instance on dpu/{dpu} is not moving; no state to hand on")
    handoff = (doc.get("spec") or {}).get("handoff") or {}
    return int(handoff.get("maxStateMiB") or 16) << 20


def add_service_routes(
    app: FastAPI, state: ServerState, identify: Callable[[Request], AgentIdentity], resolver: ProjectResolver
) -> None:
    store = state.store
    events = EventRecorder(store, "service-agent-api")
    own_dpu = dpu_of_agent(identify, resolver, "run a DPU's services")

    def runtime_of(request: Request) -> tuple[str, str, str]:
        """(project, DPU, where): a DPU agent for its own DPU, or a host agent for a DPU its host carries."""
        wanted = request.query_params.get("dpu")
        identity = identify(request)
        if identity.role != "host":
            if wanted:
                raise BadRequest("dpu: only a host agent names the DPU it asks for (a DPU agent asks for its own)")
            project, dpu = own_dpu(request)
            return project, dpu, "DPU"
        if not wanted:
            raise BadRequest("dpu: a host agent names the DPU whose host-placed instances it asks for (?dpu=NAME)")
        host = resolver.find_host(identity.serial)
        if host is None:
            raise NotFound(f"no Host with serial {identity.serial}: the host agent reports inventory first")
        project = host["metadata"]["project"]
        try:
            dpu_doc = store.get("DPU", wanted, project)
        except NotFound:
            raise NotFound(f"no DPU {wanted!r} in project {project!r}") from None
        if (dpu_doc.get("status") or {}).get("host") != host["metadata"]["name"]:
            raise Forbidden(f"DPU {wanted!r} is not carried by host {host['metadata']['name']!r}")
        return project, wanted, "Host"

    @app.get(SERVICES_PATH)
    async def services(request: Request) -> Response:
        project, dpu, where = await asyncio.to_thread(runtime_of, request)
        desired = await state.read(desired_services, store, project, dpu, where)
        await asyncio.to_thread(offer_images, desired, state.services.repository)
        await asyncio.to_thread(offer_states, desired, state.services.repository)
        body = desired.model_dump(mode="json")
        runs = {i.service for i in desired.instances}
        body["execs"] = [e.model_dump(mode="json") for e in state.execs.hand_out(project, dpu, runs)]
        return respond(body)

    @app.post(SERVICES_PATH + "/status")
    async def services_status(request: Request) -> Response:
        project, dpu, where = await asyncio.to_thread(runtime_of, request)
        report = await read_model(request, ServiceReport, "service status")
        # the runtime's whole set: a service it no longer runs has no logs from there any more
        state.service_logs[(project, dpu, where)] = {tail.service: tail.lines for tail in report.logs}
        await state.write(record_service_report, store, events, project, dpu, report, where)
        return respond({"accepted": True})

    @app.post(SERVICES_PATH + "/exec/{exec_id}")
    async def exec_result(exec_id: str, request: Request) -> Response:
        project, dpu, _where = await asyncio.to_thread(runtime_of, request)
        result = await read_model(request, ExecResult, "exec result")
        if not state.execs.resolve(project, dpu, exec_id, result):
            raise NotFound(f"no exec {exec_id!r} waits for DPU {dpu!r} (the command's caller gave up)")
        return respond({"accepted": True})

    @app.put(SERVICES_PATH + "/state/{service}")
    async def state_upload(service: str, request: Request) -> Response:
        project, dpu, where = await asyncio.to_thread(runtime_of, request)
        if where != "DPU":
            raise BadRequest("a host agent hands on no state (a move between DPUs does)")
        try:
            digest = check_digest(request.query_params.get("sha256") or "")
        except ImageContentError as exc:
            raise BadRequest(f"sha256: {exc.message}") from None
        limit = await asyncio.to_thread(state_limit, store, project, dpu, service)
        repository = state.services.repository
        if repository is None:
            raise Conflict("this control plane has no repository to keep a moving service's state in")

        try:
            stored = await repository.put(body_chunks(request), digest, max_size=limit)
        except ImageContentError as exc:
            if exc.reason == "TooLarge":
                raise TooLarge(
                    f"dpuservice/{service}: the state is over handoff.maxStateMiB ({limit >> 20} MiB)"
                ) from None
            raise BadRequest(f"dpuservice/{service}: the state: {exc.message}") from None
        return respond({"sha256": stored.sha256, "bytes": stored.size}, 201)

    _ = (services, services_status, exec_result, state_upload)
