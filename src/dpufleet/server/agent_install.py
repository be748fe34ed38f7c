"""The agent listener's install endpoints: a DPU agent pulls its own install order and reports progress.

    GET  /agent/v1/install          the open install order of the DPU the client certificate names,
                                     with a freshly signed download URL, or {"order": null}
    POST /agent/v1/install/status   what the agent did: state, bytes, total, slot, reason, message,
                                     and its A/B slots ({"id": <order id or null>, ...})

The control plane never connects to an agent: the order waits in the DPU's status
(`status.agentInstall.order`, written by the agent install driver) until the agent asks.
A certificate only ever sees the order of the DPU it was issued for: the DPU is named after
the certificate's serial, never after anything in the request.

Host agents (host-channel path, drivers/agent/host_channel.py) are answered with
``{"orders": [...]}``: the open host-channel orders of the DPUs of their own host only. An
order names the serial of the host it is addressed to (`order.hostSerial`, fixed when the
order is written); the host certificate must name that serial, and the DPU must still be one
the Host object (found by the serial its agent reports with that certificate) lists. Their
progress reports name the DPU (`dpu`: its serial) and are refused (403) for any order not
addressed to them. A DPU's own agent never sees a host-channel order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from ..api.errors import APIError, Forbidden, Invalid, NotFound
from ..api.meta import isotime, now
from ..api.validation import describe_errors
from ..controllers.naming import dpu_name
from ..controllers.runtime.status import mutate_status_sync
from ..drivers.agent.orders import HOST_CHANNEL, STATUS_FIELD, order_of
from ..images.repository import ImageContentError, repository_for
from ..security.pki import AgentIdentity
from .common import ServerState
from .common import read_json as _read_json
from .common import respond as _doc

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
    dpu: str | None = Field(default=None, min_length=1, max_length=128)  # host agents: the DPU's serial


class Unavailable(APIError):
    code = 503
    reason = "ServiceUnavailable"


def add_install_routes(app: FastAPI, state: ServerState, identify: Callable[[Request], AgentIdentity]) -> None:
    store = state.store
    hosts_by_serial: dict[str, str] = {}  # host agent serial -> Host name (checked on every use)

    def own_dpu(identity: AgentIdentity) -> str:
        if identity.role != "dpu":
            raise Forbidden(f"{identity} is not a DPU agent: only DPU agents install images")
        return dpu_name(identity.serial)

    def signed(order: dict[str, Any]) -> str:
        repository = repository_for(store)
        if repository is None:
            raise Unavailable("this server has no image repository")
        try:
            return repository.signed_url(str(order["sha256"]), str(order["fileName"]), URL_TTL)
        except ImageContentError as exc:
            raise Unavailable(exc.message) from None

    def shown(order: dict[str, Any]) -> dict[str, Any]:
        return {k: order[k] for k in ("id", "target", "version", "sha256", "fileName") if k in order}

    def find_host(serial: str) -> dict[str, Any] | None:
        """The Host whose agent reports with this serial (its certificate's), or None."""
        name = hosts_by_serial.get(serial)
        if name is not None:
            try:
                host = store.get("Host", name, "default")
                if (host.get("status") or {}).get("serialNumber") == serial:
                    return host
            except NotFound:
                pass
            hosts_by_serial.pop(serial, None)
        for host in store.list("Host", "default").items:
            if (host.get("status") or {}).get("serialNumber") == serial:
                hosts_by_serial[serial] = host["metadata"]["name"]
                return host
        return None

    def host_orders(serial: str) -> list[dict[str, Any]]:
        host = find_host(serial)
        if host is None:
            return []
        orders = []
        for name in (host.get("status") or {}).get("dpus") or []:
            try:
                dpu = store.get("DPU", name, "default")
            except NotFound:
                continue
            status = dpu.get("status") or {}
            order = order_of(status)
            if not order or not order.get("open") or order.get("channel") != HOST_CHANNEL:
                continue
            if order.get("hostSerial") != serial or status.get("host") != host["metadata"]["name"]:
                continue  # addressed to another host, or the DPU left this one
            orders.append({**shown(order), "dpu": order.get("dpuSerial"), "url": signed(order)})
        return orders

    @app.get(INSTALL_PATH)
    async def install_order(request: Request) -> Response:
        identity = identify(request)
        if identity.role == "host":
            return _doc({"orders": await asyncio.to_thread(host_orders, identity.serial)})
        name = own_dpu(identity)
        try:
            dpu = await asyncio.to_thread(store.get, "DPU", name, "default")
        except NotFound:
            return _doc({"order": None})
        order = order_of(dpu.get("status") or {})
        if not order or not order.get("open") or order.get("channel") == HOST_CHANNEL:
            return _doc({"order": None})  # a host-channel order is for the DPU's host, not its agent
        return _doc({"order": {**shown(order), "url": signed(order)}})

    @app.post(INSTALL_PATH + "/status")
    async def install_status(request: Request) -> Response:
        identity = identify(request)
        try:
            report = InstallReport.model_validate(await _read_json(request))
        except ValidationError as exc:
            summary, causes = describe_errors(exc)
            raise Invalid(f"install status is invalid: {summary}", {"causes": causes}) from None
        if identity.role == "host":
            if report.dpu is None:
                raise Invalid("a host agent's install status names the DPU (dpu: its serial)")
            name = dpu_name(report.dpu)
        else:
            name = own_dpu(identity)
        accepted = {"progress": False}

        def mutate(status: dict[str, Any]) -> None:
            section = dict(status.get(STATUS_FIELD) or {})
            order = section.get("order") or {}
            from_host = order.get("channel") == HOST_CHANNEL
            if identity.role == "host":
                if not from_host or order.get("hostSerial") != identity.serial or order.get("dpuSerial") != report.dpu:
                    raise Forbidden(f"{identity} has no install order for DPU {report.dpu}")
            elif report.slots is not None:
                section["slots"] = report.slots
            if (
                report.id is not None
                and report.id == order.get("id")
                and report.state is not None
                and from_host == (identity.role == "host")
            ):
                progress = report.model_dump(exclude={"slots", "dpu"}, exclude_none=True)
                section["progress"] = {**progress, "at": isotime(now())}
                accepted["progress"] = True
            status[STATUS_FIELD] = section

        try:
            await state.write(mutate_status_sync, store, "DPU", name, mutate, "default")
        except NotFound:
            if identity.role == "host":
                raise Forbidden(f"{identity} has no install order for DPU {report.dpu}") from None
            raise NotFound(f"no DPU {name}: the agent reports inventory first") from None
        return _doc({"accepted": accepted["progress"]})

    _ = (install_order, install_status)
