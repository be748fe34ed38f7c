"""The sim control API: inject, clear and list faults over HTTP (``/sim/v1/faults``).

Served by the fleet's own HTTP server (next to the BMCs), protected by a bearer token
the sim writes, with its URL, to ``<sim dir>/sim-control.json`` (mode 0600). It is the
emulator's back door -- nothing a real fleet has -- so the control plane never uses it;
operators, tests and ``dpufleet bench chaos`` do.

- ``GET /sim/v1/faults`` -> ``{"faults": [...], "history": [...]}``
- ``POST /sim/v1/faults`` ``{"dpu": NAME, "kind": KIND, "duration": SECONDS|null}`` -> 201 the fault
- ``DELETE /sim/v1/faults?dpu=NAME[&kind=KIND]`` -> ``{"cleared": [...]}``
- ``GET /sim/v1/devices`` -> the fleet's DPUs (id, serial, object name, host, state)
- ``GET /sim/v1/hosts/{id}`` -> a host's power state: ``{"powerState", "osRunning", "bootCount"}``
- ``POST /sim/v1/hosts/{id}/reset`` ``{"resetType": ...}`` -> 202: a host reset injected as a fault (the
  product drives hosts through their emulated Redfish BMCs instead, sim/hostbmc.py). ForceRestart and GracefulRestart
  are a host soft reset (the DPUs keep running), PowerCycle a host power cycle (its slots lose power too).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from dpufleet.sim.devices import SimHost
from dpufleet.sim.faults import FaultError, FaultKind, injector_for
from dpufleet.sim.fleet import Fleet

CONTROL_FILE = "sim-control.json"


class ControlApp:
    def __init__(self, fleet: Fleet, token: str) -> None:
        self.fleet = fleet
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._respond(request)
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> JSONResponse:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.token):
            return _error(401, "a bearer token (the sim's sim-control.json) is required")
        path = request.url.path.rstrip("/")
        injector = injector_for(self.fleet)
        try:
            if path == "/sim/v1/faults":
                if request.method == "GET":
                    return JSONResponse({"faults": injector.listing(), "history": injector.history[-100:]})
                if request.method == "POST":
                    body = await _json(request)
                    duration = body.get("duration")
                    if duration is not None and not isinstance(duration, int | float):
                        raise FaultError("duration must be a number of seconds or null")
                    fault = injector.inject(str(body.get("dpu", "")), str(body.get("kind", "")), duration)
                    return JSONResponse(fault.describe(), status_code=201)
                if request.method == "DELETE":
                    dpu = request.query_params.get("dpu")
                    if not dpu:
                        raise FaultError("name the DPU: ?dpu=NAME")
                    kind = request.query_params.get("kind") or None
                    if kind is not None and kind not in {k.value for k in FaultKind}:
                        raise FaultError(f"unknown fault kind {kind!r}")
                    return JSONResponse({"cleared": [f.describe() for f in injector.clear(dpu, kind)]})
                return _error(405, f"{request.method} is not allowed on {path}")
            if path == "/sim/v1/devices" and request.method == "GET":
                return JSONResponse({"dpus": [_device(self.fleet, d.id) for d in self.fleet.dpus]})
            if path.startswith("/sim/v1/devices/") and path.endswith("/load"):
                if request.method != "POST":
                    return _error(405, f"{request.method} is not allowed on {path}")
                device = injector.resolve(path.removeprefix("/sim/v1/devices/").removesuffix("/load"))
                load = (await _json(request)).get("load")
                if isinstance(load, bool) or not isinstance(load, int | float) or not 0 <= load <= 1:
                    raise FaultError(f"load must be a number from 0 to 1, not {load!r}")
                device.load = float(load)
                return JSONResponse(_device(self.fleet, device.id))
            if path.startswith("/sim/v1/hosts/"):
                return await self._host(request, path.removeprefix("/sim/v1/hosts/"))
        except FaultError as exc:
            return _error(404 if "no emulated DPU" in str(exc) else 400, str(exc))
        return _error(404, f"{path} is not part of the sim control API")

    async def _host(self, request: Request, rest: str) -> JSONResponse:
        host_id, _, action = rest.partition("/")
        host = next((h for h in self.fleet.hosts if h.id == host_id), None)
        if host is None:
            return _error(404, f"no emulated host is named {host_id!r}")
        if not action and request.method == "GET":
            return JSONResponse(_host_state(host))
        if action == "reset" and request.method == "POST":
            body = await _json(request)
            reset_type = str(body.get("resetType") or "ForceRestart")
            kind = _HOST_RESETS.get(reset_type)
            if kind is None:
                raise FaultError(
                    f"reset type {reset_type!r} is not supported; the host allows {', '.join(_HOST_RESETS)}"
                )
            if not host.dpus:
                raise FaultError(f"host {host_id} carries no DPU")
            # the host's fault behaviour (sim/faults.py) is keyed by one of its DPUs; it resets only the host
            injector_for(self.fleet).inject(host.dpus[0].id, kind, None)
            return JSONResponse({**_host_state(host), "resetType": reset_type}, status_code=202)
        return _error(405, f"{request.method} is not allowed on {request.url.path}")


_HOST_RESETS = {
    "ForceRestart": FaultKind.HOST_SOFT_RESET,
    "GracefulRestart": FaultKind.HOST_SOFT_RESET,
    "PowerCycle": FaultKind.HOST_POWER_CYCLE,
}


def _host_state(host: SimHost) -> dict[str, Any]:
    return {
        "id": host.id,
        "serial": host.serial,
        "powerState": "On",  # a soft reset keeps the host powered; the OS is what goes down
        "osRunning": host.os_alive,
        "bootCount": host.boot_count,
        "dpus": [d.id for d in host.dpus],
    }


def _device(fleet: Fleet, dpu_id: str) -> dict[str, Any]:
    bmc = fleet.bmcs[dpu_id]
    dpu = bmc.dpu
    return {
        "id": dpu.id,
        "serial": dpu.serial,
        "name": f"dpu-{dpu.serial.lower()}",
        "host": dpu.host_id,
        "powerState": str(dpu.power_state),
        "bootProgress": dpu.boot_progress,
        "health": dpu.health,
        "osAlive": dpu.os_alive,
        "bmcCrashed": bmc.crashed,
        "load": dpu.load,
    }


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise FaultError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise FaultError("the body must be a JSON object")
    return body


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def write_control_file(directory: Path, url: str, token: str) -> Path:
    """``sim-control.json`` (0600): where the control API is and its token."""
    path = directory / CONTROL_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, fh)
    os.chmod(path, 0o600)
    return path


def read_control_file(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / CONTROL_FILE).read_text())
    return data
