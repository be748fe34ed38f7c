"""Health routes: the BMC's log of one DPU, fetched through the server for `dpufleet debug-bundle`.

    GET /health/v1/projects/{project}/dpus/{name}/bmc-logs   admin/operator (console-access)

The server asks the DPU's BMC over Redfish with the stored credentials; the caller gets the
entries, never the credentials. The module also registers the health metrics (alerts,
quarantines) with the server's Prometheus registry.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..api.errors import BadRequest, NotFound, TooLarge, Unauthorized
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..health import actions, inbox
from ..health.diagnosis import parse_time
from ..health.probe import bmc_credentials, discover_links
from ..health.subscriptions import RECEIVER_PATH, context_matches
from ..security.policy import SubAction
from .access import Access

MAX_EVENT_BYTES = 256 * 1024  # one Event array; real BMCs send one to a few records per POST


def health_router(state: Any, dependencies: list[Any]) -> APIRouter:
    from .app import _doc

    actions.register_metrics(state.registry)
    router = APIRouter(dependencies=dependencies, tags=["health"])

    @router.get("/health/v1/projects/{project}/dpus/{name}/bmc-logs", summary="The DPU's BMC log entries (Redfish)")
    async def bmc_logs(project: str, name: str, request: Request) -> Response:
        acc: Access = request.state.access
        acc.require(SubAction.CONSOLE_ACCESS, project)
        dpu = await state.read(state.store.get, "DPU", name, project)
        bmc_name = (dpu.get("status") or {}).get("bmc")
        if not bmc_name:
            raise NotFound(f"dpu {name!r} is not managed through a BMC")
        bmc = await state.read(state.store.get, "BMC", bmc_name, project)
        creds = await bmc_credentials(state.store, bmc)
        spec = bmc["spec"]
        result: dict[str, Any] = {"bmc": bmc_name, "logs": {}, "system": None, "error": None}
        async with RedfishClient(spec["address"], creds, verify=spec.get("verifyTLS", True), retries=1) as client:
            try:
                links = await discover_links(client, (dpu.get("status") or {}).get("serialNumber"))
                system = await client.get(links.system)
                result["system"] = {
                    k: system.get(k) for k in ("PowerState", "BootProgress", "Status", "SerialNumber", "Model")
                }
                for entries in links.entries:
                    body = await client.get(entries)
                    result["logs"][entries] = body.get("Members") or []
            except RedfishError as exc:
                result["error"] = str(exc)
        await state.write(acc.record, "health-bmc-logs", "DPU", name, project)
        return _doc(result)

    _ = bmc_logs
    return router


def redfish_events_router(state: Any) -> APIRouter:
    """The receiver of the BMCs' EventService subscriptions (health/subscriptions.py).

    Not behind bearer authentication -- a BMC cannot present our tokens -- but each event must
    carry the Context its subscription was created with, derived from the server's secret key
    for that BMC; anything else is refused (401) without a hint of which part was wrong.
    """
    from .app import _doc

    router = APIRouter(tags=["health"])

    @router.post(RECEIVER_PATH, summary="Redfish events pushed by a BMC (its EventService subscription)")
    async def redfish_events(project: str, bmc: str, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_EVENT_BYTES:
            raise TooLarge(f"an event message is at most {MAX_EVENT_BYTES} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("the body must be a Redfish event message (JSON)") from None
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a Redfish event message (a JSON object)")
        refused = Unauthorized("the event does not carry the context of a subscription this server made")
        try:
            obj = await state.read(state.store.get, "BMC", bmc, project)
        except NotFound:
            raise refused from None
        if not context_matches(state.store, obj, payload.get("Context")):
            raise refused
        received = 0
        for event in payload.get("Events") or []:
            if not isinstance(event, dict):
                continue
            inbox.inbox_for(state.store).add(
                project,
                bmc,
                str(event.get("Message") or ""),
                str(event.get("MessageId") or ""),
                str(event.get("MessageSeverity") or event.get("Severity") or ""),
                parse_time(event.get("EventTimestamp")),
            )
            received += 1
        return _doc({"received": received})

    _ = redfish_events
    return router
