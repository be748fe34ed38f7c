"""The ASGI application serving one or many emulated BMCs.

One application instance can front hundreds of BMCs under
``/bmc/<bmc-id>/redfish/v1`` (one port for a whole fleet) and, when built for
a single BMC, also answers at ``/redfish/v1`` (one port per BMC). Each
request pays the BMC's configured latency while holding one of its request
slots, so a slow, busy BMC behaves like the real one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dpufleet.sim.bmc import ROLES, SimBMC
from dpufleet.sim.messages import RedfishError
from dpufleet.sim.redfish import chassis, events, managers, root, systems, update  # noqa: F401  (register routes)
from dpufleet.sim.redfish.http import ROUTER, Ctx, Reply
from dpufleet.sim.redfish.root import offers_expand

_ODATA_HEADERS = {"OData-Version": "4.0"}
_MAX_BODY = 1 << 20


class RedfishApp:
    """ASGI app: routes a request to its BMC, applies auth, latency and the concurrency limit."""

    def __init__(self, bmcs: Mapping[str, SimBMC], default: SimBMC | None = None) -> None:
        self.bmcs = bmcs
        self.default = default
        self.control: ASGIApp | None = None  # the sim control API (/sim/v1) and host BMCs, when fronting a fleet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope.get("path", "")
        if self.control is not None and path.startswith(("/sim/", "/hostbmc/")):  # control API, host BMCs
            await self.control(scope, receive, send)
            return
        bmc, _, _ = self._locate(path)
        if bmc is not None and bmc.crashed:
            await _drop_connection(scope)
            return
        request = Request(scope, receive)
        response = await self._respond(request)
        await response(scope, receive, send)

    def _locate(self, path: str) -> tuple[SimBMC | None, str, str]:
        """Split a URL path into (BMC, prefix before /redfish, rest from /redfish)."""
        if path.startswith("/bmc/"):
            bmc_id, _, rest = path[len("/bmc/") :].partition("/")
            return self.bmcs.get(bmc_id), f"/bmc/{bmc_id}", "/" + rest
        return self.default, "", path

    async def _respond(self, request: Request) -> Response:
        bmc, prefix, rest = self._locate(request.url.path)
        if bmc is None:
            return _json_response(RedfishError(404, "ResourceNotFound", "Manager", request.url.path))
        if rest.rstrip("/") == "/redfish":
            return _json_response(Reply(body={"v1": f"{prefix}/redfish/v1/"}))
        if not (rest == "/redfish/v1" or rest.startswith("/redfish/v1/")):
            return _json_response(RedfishError(404, "ResourceNotFound", "Resource", request.url.path))
        if not bmc.available():
            return _json_response(RedfishError(503, "ServiceTemporarilyUnavailable", 5, headers={"Retry-After": "5"}))
        slots = bmc.request_slots()
        if slots is not None and slots.locked() and not bmc.limits.queue_when_busy:
            return _json_response(RedfishError(503, "ServiceTemporarilyUnavailable", 1, headers={"Retry-After": "1"}))
        bmc.loop = asyncio.get_running_loop()
        bmc.in_flight += 1
        try:
            if slots is None:
                return await self._handle(request, bmc, prefix, rest)
            async with slots:
                return await self._handle(request, bmc, prefix, rest)
        finally:
            bmc.in_flight -= 1
            bmc.requests_served += 1
            bmc.requests_by_path[f"{request.method} {rest[len('/redfish/v1') :] or '/'}"] += 1

    async def _handle(self, request: Request, bmc: SimBMC, prefix: str, rest: str) -> Response:
        if bmc.limits.latency_seconds > 0:
            await asyncio.sleep(bmc.limits.latency_seconds)
        sub = rest[len("/redfish/v1") :].rstrip("/")
        method = "GET" if request.method == "HEAD" else request.method
        ctx = Ctx(bmc=bmc, root=f"{prefix}/redfish/v1", method=method)
        try:
            authenticated = _authenticate(ctx, request)
            try:
                route, params = ROUTER.match(method, sub)
            except RedfishError:
                if not authenticated:
                    raise RedfishError(401, "NoValidSession", headers=_CHALLENGE) from None
                raise
            if route.privilege != "NoAuth":
                if not authenticated:
                    raise RedfishError(401, "NoValidSession", headers=_CHALLENGE)
                assert ctx.account is not None
                if route.privilege not in ROLES[ctx.account.role]:
                    raise RedfishError(403, "InsufficientPrivilege")
            if method in ("POST", "PATCH", "PUT"):
                ctx.body = await _read_json(request)
            result = route.handler(ctx, params)
            expand = request.query_params.get("$expand")
            if expand is not None and method == "GET":
                result = _expanded(ctx, result, expand)
        except RedfishError as error:
            return _json_response(error)
        reply = result if isinstance(result, Reply) else Reply(body=result)
        if request.method == "HEAD":
            reply = Reply(reply.status, None, reply.headers, reply.media_type)
        return _json_response(reply)


_EXPAND_SUBORDINATE = (".", ".($levels=1)")


def _expanded(ctx: Ctx, result: Reply | dict[str, Any], expand: str) -> Reply | dict[str, Any]:
    """A collection with its members in place, as `$expand=.` asks (DSP0266 7.3: subordinate resources,
    which a collection's Members are; this BMC expands one level). A BMC that does not offer it refuses."""
    if not offers_expand(ctx.bmc):
        raise RedfishError(501, "QueryNotSupported")
    if expand not in _EXPAND_SUBORDINATE:
        raise RedfishError(400, "QueryParameterValueFormatError", expand, "$expand")
    body = result.body if isinstance(result, Reply) else result
    if not isinstance(body, dict) or not isinstance(body.get("Members"), list):
        return result  # no subordinate collection here to expand
    members = []
    for member in body["Members"]:
        path = str(member.get("@odata.id", "")).removeprefix(ctx.root)
        try:
            route, params = ROUTER.match("GET", path)
            inner = route.handler(ctx, params)
        except RedfishError:
            members.append(member)  # left as a link, as a BMC does with a member it cannot read now
            continue
        members.append(inner.body if isinstance(inner, Reply) else inner)
    return {**body, "Members": members}


TRANSPORT_SCOPE_KEY = "dpufleet.transport"  # set by the fleet's HTTP protocol (see sim.fleet)


async def _drop_connection(scope: Scope) -> None:
    """A dead BMC answers nothing: reset the connection (or, without access to it, never answer)."""
    transport = scope.get(TRANSPORT_SCOPE_KEY)
    if transport is None:
        await asyncio.Event().wait()  # the client times out
        return
    transport.abort()
    for _ in range(3):  # let the server see the connection is gone, so it sends no 500 of its own
        await asyncio.sleep(0)


_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Redfish"'}


def _authenticate(ctx: Ctx, request: Request) -> bool:
    """Fill ctx.account/session from X-Auth-Token or HTTP Basic; return whether it succeeded."""
    bmc = ctx.bmc
    token = request.headers.get("x-auth-token")
    if token:
        session = bmc.session_for_token(token)
        if session is None:
            return False
        account = bmc.account_by_name(session.username)
        if account is None or not account.enabled:
            return False
        ctx.session, ctx.account = session, account
        return True
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        username, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    account = bmc.authenticate(username, password)
    ctx.account = account
    return account is not None


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise RedfishError(413, "GeneralError")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RedfishError(400, "MalformedJSON") from None


def _json_response(reply: Reply | RedfishError) -> Response:
    if isinstance(reply, RedfishError):
        reply = Reply(reply.status, reply.body(), reply.headers)
    headers = {**_ODATA_HEADERS, **reply.headers}
    if reply.body is None:
        return Response(status_code=reply.status, headers=headers)
    if isinstance(reply.body, str):
        return Response(reply.body, reply.status, headers, media_type=reply.media_type)
    content = json.dumps(reply.body, separators=(",", ":"))
    return Response(content, reply.status, headers, media_type="application/json; charset=utf-8")


def create_bmc_app(bmc: SimBMC) -> RedfishApp:
    """An app for one BMC, answering at /redfish/v1 (and /bmc/<id>/redfish/v1)."""
    return RedfishApp({bmc.id: bmc}, default=bmc)


def create_fleet_app(bmcs: Mapping[str, SimBMC]) -> RedfishApp:
    """One app for many BMCs, each under /bmc/<bmc-id>/redfish/v1."""
    return RedfishApp(bmcs)
