"""Health routes: the BMC's log of one DPU, fetched through the server for `dpufleet debug-bundle`.

    GET /health/v1/projects/{project}/dpus/{name}/bmc-logs   admin/operator (console-access)

The server asks the DPU's BMC over Redfish with the stored credentials; the caller gets the
entries, never the credentials. The module also registers the health metrics (alerts,
quarantines) with the server's Prometheus registry, and holds the receiver of the events BMCs
push (RedfishEventReceiver).
"""

from __future__ import annotations

import hmac
import time
from typing import Any
from urllib.parse import unquote

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api.errors import APIError, BadRequest, NotFound, TooLarge, Unauthorized
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..health import actions, inbox
from ..health.diagnosis import parse_time
from ..health.probe import bmc_credentials, discover_links
from ..health.subscriptions import RECEIVER_PATH, event_context
from ..security.policy import SubAction
from ..store.store import MODIFIED, Change
from .access import Access
from .common import respond
from .metrics import APIMetrics

MAX_EVENT_BYTES = 256 * 1024  # one Event array; real BMCs send one to a few records per POST


def health_router(state: Any, dependencies: list[Any]) -> APIRouter:
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
        return respond(result)

    _ = bmc_logs
    return router


class RedfishEventReceiver:
    """The receiver of the BMCs' EventService subscriptions (health/subscriptions.py):

        POST /health/v1/redfish-events/{project}/{bmc}

    Not behind bearer authentication -- a BMC cannot present our tokens -- but each event must
    carry the Context its subscription was created with, derived from the server's secret key
    for that BMC; anything else is refused (401) without a hint of which part was wrong.

    Pure ASGI in front of the routes: every BMC pushes several events per update, and FastAPI's
    routing and dependency machinery cost twice the receiving itself. Counted in the API metrics
    under its path template like any route.
    """

    PREFIX = RECEIVER_PATH.split("{", 1)[0]

    # The Context each BMC's events must carry, kept between its events: reading the BMC for every
    # event was a store trip per event. Dropped when the BMC is deleted or made again in this process
    # (a new uid), and read again after CONTEXT_SECONDS whatever happens (another process).
    CONTEXT_SECONDS = 60.0

    def __init__(self, app: ASGIApp, state: Any, metrics: APIMetrics) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics
        self._contexts: dict[tuple[str, str], tuple[str, float]] = {}
        state.store.add_listener(self._on_changes)

    def _on_changes(self, changes: list[Change]) -> None:
        for change in changes:
            if change.kind == "BMC" and change.type != MODIFIED:  # the Context hangs on the uid: made or gone
                self._contexts.pop((change.project, change.name), None)

    async def context_of(self, project: str, bmc: str) -> str | None:
        """The Context the BMC's subscription carries; None when there is no such BMC."""
        cached = self._contexts.get((project, bmc))
        if cached is not None and time.monotonic() - cached[1] < self.CONTEXT_SECONDS:
            return cached[0]
        try:
            obj = await self.state.read(self.state.store.get, "BMC", bmc, project)
        except NotFound:
            return None
        context = event_context(self.state.store, obj)
        self._contexts[(project, bmc)] = (context, time.monotonic())
        return context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        parts = path[len(self.PREFIX) :].split("/") if path.startswith(self.PREFIX) else []
        if len(parts) != 2 or not all(parts) or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            body = await _read_body(receive, MAX_EVENT_BYTES)
            code, answer = 200, await receive_events(self, unquote(parts[0]), unquote(parts[1]), body)
        except APIError as exc:
            code, answer = exc.code, exc.to_status()
        payload = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        self.metrics.requests.labels("POST", RECEIVER_PATH, str(code)).inc()
        self.metrics.latency.labels("POST", RECEIVER_PATH).observe(time.perf_counter() - start)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away before sending its whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"an event message is at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def receive_events(receiver: RedfishEventReceiver, project: str, bmc: str, body: bytes) -> dict[str, Any]:
    """Check a pushed event message against the BMC's subscription Context and keep its events."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be a Redfish event message (JSON)") from None
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a Redfish event message (a JSON object)")
    expected = await receiver.context_of(project, bmc)
    context = payload.get("Context")
    if expected is None or not isinstance(context, str) or not hmac.compare_digest(context, expected):
        raise Unauthorized("the event does not carry the context of a subscription this server made")
    received = 0
    for event in payload.get("Events") or []:
        if not isinstance(event, dict):
            continue
        inbox.inbox_for(receiver.state.store).add(
            project,
            bmc,
            str(event.get("Message") or ""),
            str(event.get("MessageId") or ""),
            str(event.get("MessageSeverity") or event.get("Severity") or ""),
            parse_time(event.get("EventTimestamp")),
        )
        received += 1
    return {"received": received}
