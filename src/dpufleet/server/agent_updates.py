"""The agent listener's update endpoints: hosts and DPU agents ask for updates, the control plane decides.

    GET  /agent/v1/updates          (DPU agents) the newest approved image for this DPU that is newer
                                     than the one it runs, or {"image": null}
    POST /agent/v1/update-requests  (DPU and host agents) ask for an update: {"image", "reason",
                                     "dpu" (host agents: the DPU's serial)}; answered 202 with the
                                     UpdateRequest it filed

Who asks is read from the client certificate, never from the request: a DPU agent asks only for
its own DPU (`source: agent`), a host agent only for a DPU its Host lists (`source: host`).
The request is then decided by the same policy as any other (controllers/update_request.py).
An image is *approved* for agents to pull when an operator labels it `dpufleet.io/approved: "true"`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from ..api.errors import Forbidden, Invalid, NotFound
from ..api.validation import describe_errors
from ..controllers.naming import dpu_name
from ..lifecycle.planner import compare
from ..security.pki import AgentIdentity
from ..store.store import Store
from .common import ServerState
from .common import read_json as _read_json
from .common import respond as _doc

APPROVED = "dpufleet.io/approved"
PROJECT = "default"  # agents belong to the default project (as their reports do)


class AgentUpdateRequest(BaseModel):
    image: str = Field(min_length=1, max_length=253)
    reason: str = Field(default="", max_length=500)
    dpu: str | None = Field(default=None, min_length=1, max_length=128, description="host agents: the DPU's serial")


def newest_approved(store: Store, dpu: dict[str, Any]) -> dict[str, Any] | None:
    """The newest image labelled approved, compatible with the DPU, newer than the image it runs."""
    status = dpu.get("status") or {}
    running: str | None = None
    if status.get("installedImage"):
        try:
            running = str(store.get("Image", status["installedImage"], PROJECT)["spec"]["version"])
        except NotFound:
            running = None
    best: dict[str, Any] | None = None
    for image in store.list("Image", PROJECT).items:
        if (image["metadata"].get("labels") or {}).get(APPROVED) != "true":
            continue
        spec = image.get("spec") or {}
        compat = spec.get("compatibility") or {}
        if compat.get("vendors") and status.get("vendor") not in compat["vendors"]:
            continue
        if compat.get("models") and status.get("model") not in compat["models"]:
            continue
        version = str(spec.get("version") or "")
        if running is not None and compare(version, running) <= 0:
            continue
        if best is None or compare(version, str(best["spec"]["version"])) > 0:
            best = image
    return best


def add_update_routes(app: FastAPI, state: ServerState, identify: Callable[[Request], AgentIdentity]) -> None:
    store = state.store

    def dpu_of(identity: AgentIdentity, body: AgentUpdateRequest) -> tuple[dict[str, Any], str]:
        """The DPU the request may speak for, and the source it is filed under."""
        if identity.role == "dpu":
            if body.dpu not in (None, identity.serial):
                raise Forbidden(f"{identity} asks only for its own DPU, not {body.dpu}")
            try:
                return store.get("DPU", dpu_name(identity.serial), PROJECT), "agent"
            except NotFound:
                raise NotFound(f"no DPU with serial {identity.serial} is known") from None
        if not body.dpu:
            raise Invalid("dpu: a host agent names the DPU (its serial) it asks an update for")
        host = next(
            (
                h
                for h in store.list("Host", PROJECT).items
                if (h.get("status") or {}).get("serialNumber") == identity.serial
            ),
            None,
        )
        try:
            dpu = store.get("DPU", dpu_name(body.dpu), PROJECT)
        except NotFound:
            dpu = None
        if host is None or dpu is None or (dpu.get("status") or {}).get("host") != host["metadata"]["name"]:
            raise Forbidden(f"{identity} may ask updates only for the DPUs of its own host; {body.dpu} is not one")
        return dpu, "host"

    @app.get("/agent/v1/updates")
    async def offered(request: Request) -> Response:
        identity = identify(request)
        if identity.role != "dpu":
            raise Forbidden(f"{identity} is not a DPU agent: only DPU agents pull updates")
        try:
            dpu = await state.read(store.get, "DPU", dpu_name(identity.serial), PROJECT)
        except NotFound:
            raise NotFound(f"no DPU with serial {identity.serial} is known") from None
        image = await state.read(newest_approved, store, dpu)
        if image is None:
            return _doc({"image": None})
        return _doc({"image": image["metadata"]["name"], "version": image["spec"]["version"]})

    @app.post("/agent/v1/update-requests", status_code=202)
    async def ask(request: Request) -> Response:
        identity = identify(request)
        try:
            body = AgentUpdateRequest.model_validate(await _read_json(request))
        except ValidationError as exc:
            summary, causes = describe_errors(exc)
            raise Invalid(f"update request is invalid: {summary}", {"causes": causes}) from None
        dpu, source = await asyncio.to_thread(dpu_of, identity, body)
        name = f"{dpu['metadata']['name']}-{source}-{secrets.token_hex(4)}"
        doc = {
            "kind": "UpdateRequest",
            "metadata": {"name": name, "project": PROJECT, "labels": {"dpufleet.io/source": source}},
            "spec": {
                "dpu": dpu["metadata"]["name"],
                "image": body.image,
                "source": source,
                "reason": body.reason or f"asked by {identity}",
            },
        }
        created = await state.create(doc)
        return _doc(created, 202)

    _ = (offered, ask)
