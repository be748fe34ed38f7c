"""The agent listener's install endpoints: a DPU agent pulls its own install order and reports progress.

    GET  /agent/v1/install          the open install order of the DPU the client certificate names,
                                     with a freshly signed download URL, or {"order": null}
    POST /agent/v1/install/status   what the agent did: state, bytes, total, slot, reason, message,
                                     and its A/B slots ({"id": <order id or null>, ...})

The control plane never connects to an agent: the order waits in the DPU's status
(`status.agentInstall.order`, written by the agent install driver) until the agent asks.
A certificate only ever sees the order of the DPU it was issued for: the DPU is named after
the certificate's serial, never after anything in the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from ..api.errors import APIError, Forbidden, Invalid, NotFound
from ..api.validation import describe_errors
from ..controllers.naming import dpu_name
from ..controllers.runtime.status import mutate_status_sync
from ..drivers.agent.install import STATUS_FIELD, order_of
from ..images.repository import ImageContentError, repository_for
from ..security.pki import AgentIdentity
from .app import ServerState, _doc, _read_json

INSTALL_PATH = "/agent/v1/install"
URL_TTL = 3600.0


class InstallReport(BaseModel):
    id: str | None = Field(default=None, max_length=64)
    state: (
        Literal["Pending", "Downloading", "Verifying", "Writing", "Staged", "Booted", "FellBack", "Failed"] | None
    ) = None
    bytes: int | None = Field(default=None, ge=0)
    total: int | None = Field(default=None, ge=0)
    slot: str | None = Field(default=None, pattern="^[ab]$")
    reason: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=2000)
    slots: dict[str, Any] | None = None


class Unavailable(APIError):
    code = 503
    reason = "ServiceUnavailable"


def add_install_routes(app: FastAPI, state: ServerState, identify: Callable[[Request], AgentIdentity]) -> None:
    store = state.store

    def own_dpu(request: Request) -> str:
        identity = identify(request)
        if identity.role != "dpu":
            raise Forbidden(f"{identity} is not a DPU agent: only DPU agents install images")
        return dpu_name(identity.serial)

    @app.get(INSTALL_PATH)
    async def install_order(request: Request) -> Response:
        name = own_dpu(request)
        try:
            dpu = await asyncio.to_thread(store.get, "DPU", name, "default")
        except NotFound:
            return _doc({"order": None})
        order = order_of(dpu.get("status") or {})
        if not order or not order.get("open"):
            return _doc({"order": None})
        repository = repository_for(store)
        if repository is None:
            raise Unavailable("this server has no image repository")
        try:
            url = repository.signed_url(str(order["sha256"]), str(order["fileName"]), URL_TTL)
        except ImageContentError as exc:
            raise Unavailable(exc.message) from None
        shown = {k: order[k] for k in ("id", "target", "version", "sha256", "fileName") if k in order}
        return _doc({"order": {**shown, "url": url}})

    @app.post(INSTALL_PATH + "/status")
    async def install_status(request: Request) -> Response:
        name = own_dpu(request)
        try:
            report = InstallReport.model_validate(await _read_json(request))
        except ValidationError as exc:
            summary, causes = describe_errors(exc)
            raise Invalid(f"install status is invalid: {summary}", {"causes": causes}) from None
        accepted = {"progress": False}

        def mutate(status: dict[str, Any]) -> None:
            section = dict(status.get(STATUS_FIELD) or {})
            if report.slots is not None:
                section["slots"] = report.slots
            order = section.get("order") or {}
            if report.id is not None and report.id == order.get("id") and report.state is not None:
                section["progress"] = report.model_dump(exclude={"slots"}, exclude_none=True)
                accepted["progress"] = True
            status[STATUS_FIELD] = section

        try:
            await state.write(mutate_status_sync, store, "DPU", name, mutate, "default")
        except NotFound:
            raise NotFound(f"no DPU {name}: the agent reports inventory first") from None
        return _doc({"accepted": accepted["progress"]})

    _ = (install_order, install_status)
