"""Each emulated host's own BMC: a small Redfish service (ComputerSystem, Chassis, Manager).

Served under ``/hostbmc/<host-id>/redfish/v1``. The product drives host power through it
(drivers/redfish/hostbmc.py, Host.spec.bmcRef) as it would a real server's BMC; a reset changes the
emulated host the way a host fault does (sim/faults.py), so the host's OS goes down and comes back.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dpufleet.sim.devices import SimDPU, SimHost
from dpufleet.sim.faults import FaultKind, injector_for
from dpufleet.sim.fleet import Fleet

PREFIX = "/hostbmc/"
RESETS = {
    "ForceRestart": FaultKind.HOST_SOFT_RESET,
    "GracefulRestart": FaultKind.HOST_SOFT_RESET,
    "PowerCycle": FaultKind.HOST_POWER_CYCLE,
}
POWER_OFF = ("ForceOff", "GracefulShutdown")  # the host stays off (and its slots unpowered) until "On"
BOOT_TARGETS = ("None", "Pxe", "Hdd", "Cd", "UefiHttp", "BiosSetup")
BOOT_ENABLED = ("Disabled", "Once", "Continuous")


class HostBMCApp:
    """ASGI app for every emulated host's BMC; HTTP Basic auth with the site's BMC account."""

    def __init__(self, fleet: Fleet, username: str, password: str, *, manages_dpus: bool = False) -> None:
        self.fleet = fleet
        self.username, self.password = username, password
        # DMTF's SmartNIC model: the host's BMC also shows each DPU of the host as a system of its own
        # (SystemType DPU) on a Card chassis ContainedBy the host's, with its network device functions
        self.manages_dpus = manages_dpus
        self.media: dict[str, dict[str, Any]] = {}  # host id -> its CD1's Image, Inserted, WriteProtected
        self.boot: dict[str, dict[str, str]] = {}  # host id -> its Boot override

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = await self._respond(Request(scope, receive))
        await response(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (
            scheme.lower() == "basic"
            and secrets.compare_digest(user, self.username)
            and secrets.compare_digest(password, self.password)
        )

    def single(self, host_id: str) -> ASGIApp:
        """One host's BMC alone, at the root of its own port (``/redfish/v1``), as a real server's BMC is."""
        host = self._host(host_id)
        if host is None:
            raise KeyError(f"no emulated host is named {host_id!r}")

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            request = Request(scope, receive)
            response = await self._respond_for(request, host, "/redfish/v1", request.url.path.rstrip("/"))
            await response(scope, receive, send)

        return app

    def _host(self, host_id: str) -> SimHost | None:
        return next((h for h in self.fleet.hosts if h.id == host_id), None)

    async def _respond(self, request: Request) -> Response:
        host_id, _, rest = request.url.path.removeprefix(PREFIX).partition("/")
        host = self._host(host_id)
        if host is None:
            return _error(404, f"no emulated host BMC is named {host_id!r}")
        return await self._respond_for(request, host, f"{PREFIX}{host_id}/redfish/v1", "/" + rest.rstrip("/"))

    async def _respond_for(self, request: Request, host: SimHost, base: str, path: str) -> Response:
        """`path` is the request's path below the BMC's mount (starting with /redfish/v1); `base` the
        mount's own /redfish/v1, which every @odata.id the BMC serves starts with."""
        if path == "/redfish/v1":
            return JSONResponse(_root(base))
        if not self._authorized(request):
            return _error(401, "authentication required")
        cards = host.dpus if self.manages_dpus else []
        docs = {
            "/redfish/v1/Systems": _collection(
                f"{base}/Systems",
                "#ComputerSystemCollection.ComputerSystemCollection",
                [f"{base}/Systems/System", *(f"{base}/Systems/{_dpu_system(d)}" for d in cards)],
            ),
            "/redfish/v1/Chassis": _collection(
                f"{base}/Chassis",
                "#ChassisCollection.ChassisCollection",
                [f"{base}/Chassis/Chassis", *(f"{base}/Chassis/{_card(d)}" for d in cards)],
            ),
            "/redfish/v1/Managers": _collection(
                f"{base}/Managers", "#ManagerCollection.ManagerCollection", [f"{base}/Managers/BMC"]
            ),
            "/redfish/v1/SessionService": _session_service(base),
            "/redfish/v1/SessionService/Sessions": _collection(
                f"{base}/SessionService/Sessions", "#SessionCollection.SessionCollection", []
            ),
            "/redfish/v1/Chassis/Chassis": _chassis(base, host, cards),
            "/redfish/v1/Managers/BMC": _manager(base, host, cards),
            "/redfish/v1/Managers/BMC/VirtualMedia": _collection(
                f"{base}/Managers/BMC/VirtualMedia",
                "#VirtualMediaCollection.VirtualMediaCollection",
                [f"{base}/Managers/BMC/VirtualMedia/CD1"],
            ),
            "/redfish/v1/Managers/BMC/VirtualMedia/CD1": _virtual_media(base, self._media(host)),
        }
        for dpu in cards:
            docs.update(_dpu_docs(base, dpu))
        if request.method == "GET" and path in docs:
            return JSONResponse(docs[path])
        if path == "/redfish/v1/Systems/System":
            if request.method == "PATCH":
                return await self._patch_boot(request, host)
            if request.method == "GET":
                return JSONResponse(_system(base, host, self._boot(host)))
        if path == "/redfish/v1/Systems/System/Actions/ComputerSystem.Reset" and request.method == "POST":
            return await self._reset(request, host)
        if path == f"{_CD}/Actions/VirtualMedia.InsertMedia" and request.method == "POST":
            return await self._insert_media(request, host)
        if path == f"{_CD}/Actions/VirtualMedia.EjectMedia" and request.method == "POST":
            media = self._media(host)
            if not media["Inserted"]:
                return _error(400, "no media is inserted in CD1")
            self.media[host.id] = {"Image": None, "Inserted": False, "WriteProtected": True}
            return Response(status_code=204)
        return _error(404, f"{request.url.path} is not a resource of this BMC")

    def _media(self, host: SimHost) -> dict[str, Any]:
        return self.media.setdefault(host.id, {"Image": None, "Inserted": False, "WriteProtected": True})

    async def _insert_media(self, request: Request, host: SimHost) -> Response:
        body = await _body(request)
        image = body.get("Image")
        if not isinstance(image, str) or not image.startswith(("http://", "https://")):
            return _error(400, "InsertMedia takes an Image: the http:// or https:// URL of the image")
        if self._media(host)["Inserted"]:
            return _error(409, "CD1 already holds media: eject it first (VirtualMedia.EjectMedia)")
        protected = body.get("WriteProtected", True)
        self.media[host.id] = {"Image": image, "Inserted": True, "WriteProtected": protected is not False}
        return Response(status_code=204)

    def _boot(self, host: SimHost) -> dict[str, str]:
        return self.boot.setdefault(
            host.id, {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}
        )

    async def _patch_boot(self, request: Request, host: SimHost) -> Response:
        boot = (await _body(request)).get("Boot")
        if not isinstance(boot, dict):
            return _error(400, "PATCH takes a Boot object")
        target = boot.get("BootSourceOverrideTarget", self._boot(host)["BootSourceOverrideTarget"])
        enabled = boot.get("BootSourceOverrideEnabled", self._boot(host)["BootSourceOverrideEnabled"])
        if target not in BOOT_TARGETS or enabled not in BOOT_ENABLED:
            return _error(400, f"BootSourceOverrideTarget {target!r} / Enabled {enabled!r} is not allowed")
        self.boot[host.id] = {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}
        return Response(status_code=204)

    async def _reset(self, request: Request, host: SimHost) -> Response:
        reset_type = str((await _body(request)).get("ResetType", ""))
        injector = injector_for(self.fleet)
        if reset_type in ("On", "PowerCycle") and not host.powered:
            injector.power_on_host(host)  # a power cycle of a host that is off powers it on, as BMCs do
            return self._spend_once_override(host)
        if reset_type == "On":
            return Response(status_code=204)  # already on: nothing to do
        if reset_type in POWER_OFF:
            injector.power_off_host(host)
            return Response(status_code=204)
        kind = RESETS.get(reset_type)
        if kind is None or not host.dpus:
            allowed = ", ".join(["On", *POWER_OFF, *RESETS])
            return _error(400, f"ResetType {reset_type!r} is not allowed; allowed: {allowed}")
        if not host.powered:
            return _error(409, f"ResetType {reset_type!r}: the host is powered off; power it on with ResetType On")
        injector.inject(host.dpus[0].id, kind, None)  # host faults are keyed by a DPU
        return self._spend_once_override(host)

    def _spend_once_override(self, host: SimHost) -> Response:
        """A boot spends a Once boot override."""
        if self._boot(host)["BootSourceOverrideEnabled"] == "Once":
            self.boot[host.id] = {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}
        return Response(status_code=204)


class SiteApp:
    """The sim's site services on one port: the control API (/sim/v1) and the host BMCs (/hostbmc/)."""

    def __init__(self, control: ASGIApp, host_bmcs: HostBMCApp) -> None:
        self.control, self.host_bmcs = control, host_bmcs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope.get("path", "")).startswith(PREFIX):
            await self.host_bmcs(scope, receive, send)
        else:
            await self.control(scope, receive, send)


def _root(base: str) -> dict[str, Any]:
    return {
        "@odata.id": base, "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot", "Id": "RootService",
        "Name": "Root Service", "RedfishVersion": "1.17.0",
        "Systems": {"@odata.id": f"{base}/Systems"}, "Chassis": {"@odata.id": f"{base}/Chassis"},
        "Managers": {"@odata.id": f"{base}/Managers"},
        "SessionService": {"@odata.id": f"{base}/SessionService"},
        "Links": {"Sessions": {"@odata.id": f"{base}/SessionService/Sessions"}},
    }  # fmt: skip


def _session_service(base: str) -> dict[str, Any]:
    """HTTP Basic only: no sessions are made (a session login is refused with 405)."""
    return {
        "@odata.id": f"{base}/SessionService", "@odata.type": "#SessionService.v1_1_9.SessionService",
        "Id": "SessionService", "Name": "Session Service", "ServiceEnabled": False, "SessionTimeout": 30,
        "Sessions": {"@odata.id": f"{base}/SessionService/Sessions"},
    }  # fmt: skip


def _collection(odata_id: str, odata_type: str, members: list[str]) -> dict[str, Any]:
    return {
        "@odata.id": odata_id, "@odata.type": odata_type, "Name": odata_id.rsplit("/", 1)[-1],
        "Members": [{"@odata.id": m} for m in members], "Members@odata.count": len(members),
    }  # fmt: skip


def _system(base: str, host: SimHost, boot: dict[str, str]) -> dict[str, Any]:
    return {
        "@odata.id": f"{base}/Systems/System", "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "Id": "System", "Name": host.id, "SystemType": "Physical", "UUID": host.uuid,
        "Manufacturer": host.model.vendor, "Model": host.model.product, "SerialNumber": host.serial,
        "PowerState": "On" if host.powered else "Off",  # a soft reset keeps it powered; the OS goes down
        "BootProgress": {
            "LastState": "None" if not host.powered else "OSRunning" if host.os_alive
            else "SystemHardwareInitializationComplete",
            "LastStateTime": datetime.fromtimestamp(host.booted_at, UTC).isoformat(timespec="milliseconds"),
        },
        "ProcessorSummary": {"Model": host.model.cpu_model, "Count": host.model.cpu_count},
        "MemorySummary": {"TotalSystemMemoryGiB": host.model.memory_mib / 1024},
        "Boot": {**boot, "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS)},
        "SerialConsole": {"MaxConcurrentSessions": 1, "SSH": {"ServiceEnabled": True, "Port": 2200},
                          "IPMI": {"ServiceEnabled": True, "Port": 623}},
        "Actions": {"#ComputerSystem.Reset": {
            "target": f"{base}/Systems/System/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", *POWER_OFF, *RESETS],
        }},
        "Links": {"Chassis": [{"@odata.id": f"{base}/Chassis/Chassis"}],
                  "ManagedBy": [{"@odata.id": f"{base}/Managers/BMC"}]},
    }  # fmt: skip


def _chassis(base: str, host: SimHost, cards: list[SimDPU]) -> dict[str, Any]:
    links: dict[str, Any] = {"ComputerSystems": [{"@odata.id": f"{base}/Systems/System"}]}
    if cards:
        links["Contains"] = [{"@odata.id": f"{base}/Chassis/{_card(d)}"} for d in cards]
    return {
        "@odata.id": f"{base}/Chassis/Chassis", "@odata.type": "#Chassis.v1_23_0.Chassis", "Id": "Chassis",
        "Name": host.id, "ChassisType": "RackMount", "Manufacturer": host.model.vendor,
        "Model": host.model.product, "SerialNumber": host.serial, "Links": links,
    }  # fmt: skip


def _dpu_system(dpu: SimDPU) -> str:
    return f"DPU{dpu.slot}"


def _card(dpu: SimDPU) -> str:
    return f"Card{dpu.slot}"


def _dpu_docs(base: str, dpu: SimDPU) -> dict[str, dict[str, Any]]:
    """A DPU as its host's BMC shows it in DMTF's SmartNIC model: its system, its Card chassis in the
    host's, and a network adapter whose functions the DPU's system offloads (Links.OffloadSystem)."""
    system, card = f"{base}/Systems/{_dpu_system(dpu)}", f"{base}/Chassis/{_card(dpu)}"
    adapter = f"{card}/NetworkAdapters/NIC"
    functions = [f"{adapter}/NetworkDeviceFunctions/{nic.name}" for nic in dpu.data_nics]
    profile = dpu.profile
    docs: dict[str, dict[str, Any]] = {
        f"/redfish/v1/Systems/{_dpu_system(dpu)}": {
            "@odata.id": system, "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem", "Id": _dpu_system(dpu),
            "Name": f"{dpu.id} Arm system", "SystemType": "DPU", "UUID": dpu.uuid,
            "Manufacturer": profile.vendor, "Model": profile.model, "PartNumber": profile.part_number,
            "SerialNumber": dpu.serial, "PowerState": str(dpu.power_state),
            "BootProgress": {"LastState": dpu.boot_progress},
            "ProcessorSummary": {"Count": 1, "CoreCount": profile.cpu.cores, "Model": profile.cpu.model},
            "MemorySummary": {"TotalSystemMemoryGiB": profile.memory.total_mib / 1024},
            "Links": {
                "Chassis": [{"@odata.id": card}], "ManagedBy": [{"@odata.id": f"{base}/Managers/BMC"}],
                "OffloadedNetworkDeviceFunctions": [{"@odata.id": f} for f in functions],
            },
        },
        f"/redfish/v1/Chassis/{_card(dpu)}": {
            "@odata.id": card, "@odata.type": "#Chassis.v1_23_0.Chassis", "Id": _card(dpu),
            "Name": f"{dpu.id} card", "ChassisType": "Card", "Manufacturer": profile.vendor,
            "Model": profile.model, "PartNumber": profile.part_number, "SerialNumber": dpu.serial,
            "NetworkAdapters": {"@odata.id": f"{card}/NetworkAdapters"},
            "Links": {
                "ComputerSystems": [{"@odata.id": system}], "ManagedBy": [{"@odata.id": f"{base}/Managers/BMC"}],
                "ContainedBy": {"@odata.id": f"{base}/Chassis/Chassis"},
            },
        },
        f"/redfish/v1/Chassis/{_card(dpu)}/NetworkAdapters": _collection(
            f"{card}/NetworkAdapters", "#NetworkAdapterCollection.NetworkAdapterCollection", [adapter]
        ),
        f"/redfish/v1/Chassis/{_card(dpu)}/NetworkAdapters/NIC": {
            "@odata.id": adapter, "@odata.type": "#NetworkAdapter.v1_9_0.NetworkAdapter", "Id": "NIC",
            "Name": f"{profile.model} network adapter", "Manufacturer": profile.vendor, "Model": profile.model,
            "PartNumber": profile.part_number, "SerialNumber": dpu.serial,
            "NetworkDeviceFunctions": {"@odata.id": f"{adapter}/NetworkDeviceFunctions"},
        },
        f"/redfish/v1/Chassis/{_card(dpu)}/NetworkAdapters/NIC/NetworkDeviceFunctions": _collection(
            f"{adapter}/NetworkDeviceFunctions",
            "#NetworkDeviceFunctionCollection.NetworkDeviceFunctionCollection", functions,
        ),
    }  # fmt: skip
    for nic, function in zip(dpu.data_nics, functions, strict=True):
        docs["/redfish/v1" + function.removeprefix(base)] = {
            "@odata.id": function, "@odata.type": "#NetworkDeviceFunction.v1_9_0.NetworkDeviceFunction",
            "Id": nic.name, "Name": f"{dpu.id} {nic.name}", "NetDevFuncType": "Ethernet",
            "Ethernet": {"MACAddress": nic.mac, "PermanentMACAddress": nic.mac, "MTUSize": nic.mtu},
            "Links": {"OffloadSystem": {"@odata.id": system}},
        }  # fmt: skip
    return docs


def _manager(base: str, host: SimHost, cards: list[SimDPU]) -> dict[str, Any]:
    servers = [f"{base}/Systems/System", *(f"{base}/Systems/{_dpu_system(d)}" for d in cards)]
    chassis = [f"{base}/Chassis/Chassis", *(f"{base}/Chassis/{_card(d)}" for d in cards)]
    return {
        "@odata.id": f"{base}/Managers/BMC", "@odata.type": "#Manager.v1_18_0.Manager", "Id": "BMC",
        "Name": f"{host.id} BMC", "ManagerType": "BMC",
        "SerialConsole": {"ServiceEnabled": True, "MaxConcurrentSessions": 1, "ConnectTypesSupported": ["SSH", "IPMI"]},
        "GraphicalConsole": {"ServiceEnabled": True, "MaxConcurrentSessions": 2, "ConnectTypesSupported": ["KVMIP"]},
        "VirtualMedia": {"@odata.id": f"{base}/Managers/BMC/VirtualMedia"},
        "Links": {"ManagerForServers": [{"@odata.id": i} for i in servers],
                  "ManagerForChassis": [{"@odata.id": i} for i in chassis]},
    }  # fmt: skip


_CD = "/redfish/v1/Managers/BMC/VirtualMedia/CD1"


def _virtual_media(base: str, media: dict[str, Any]) -> dict[str, Any]:
    cd = f"{base}/Managers/BMC/VirtualMedia/CD1"
    return {
        "@odata.id": cd, "@odata.type": "#VirtualMedia.v1_6_0.VirtualMedia", "Id": "CD1", "Name": "Virtual CD",
        "MediaTypes": ["CD", "DVD"], "Image": media["Image"],
        "ImageName": media["Image"].rsplit("/", 1)[-1] if media["Image"] else None,
        "Inserted": media["Inserted"], "WriteProtected": media["WriteProtected"],
        "ConnectedVia": "URI" if media["Inserted"] else "NotConnected",
        "Actions": {
            "#VirtualMedia.InsertMedia": {"target": f"{cd}/Actions/VirtualMedia.InsertMedia"},
            "#VirtualMedia.EjectMedia": {"target": f"{cd}/Actions/VirtualMedia.EjectMedia"},
        },
    }  # fmt: skip


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": "Base.1.0.GeneralError", "message": message}}, status_code=status)
