"""Managers/<id>: the DPU's BMC, with its event log (SEL)."""

from __future__ import annotations

from dpufleet.sim.bmc import CHASSIS_ID, MANAGER_ID, MANAGER_RESET_TYPES, SYSTEM_ID, SimLogEntry
from dpufleet.sim.clock import utcnow_iso
from dpufleet.sim.messages import RedfishError
from dpufleet.sim.redfish.http import ROUTER, Ctx, Json, Reply, check_id, collection, reject_unknown, status_ok
from dpufleet.sim.redfish.logs import entries as log_entries_body
from dpufleet.sim.redfish.logs import log_service as log_service_body
from dpufleet.sim.redfish.schema import odata_type

_LOG_ID = "SEL"
_MAX_RECORDS = 1000


@ROUTER.add("GET", "/Managers")
def managers(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(ctx, "ManagerCollection", "Manager Collection", ("Managers",), [MANAGER_ID])


@ROUTER.add("GET", "/Managers/{manager_id}")
def manager(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    bmc = ctx.bmc
    base = ("Managers", MANAGER_ID)
    return {
        "@odata.id": ctx.uri(*base),
        "@odata.type": odata_type("Manager"),
        "Id": MANAGER_ID,
        "Name": f"{bmc.dpu.profile.bmc.model}",
        "ManagerType": "BMC",
        "Manufacturer": bmc.dpu.profile.bmc.manufacturer,
        "Model": bmc.dpu.profile.bmc.model,
        "SerialNumber": bmc.dpu.bmc_serial,
        "FirmwareVersion": bmc.firmware_version,
        "UUID": bmc.uuid,
        "PowerState": "On",
        "DateTime": utcnow_iso(),
        "DateTimeLocalOffset": "+00:00",
        "Status": status_ok(),
        "LogServices": ctx.link(*base, "LogServices"),
        "VirtualMedia": ctx.link(*base, "VirtualMedia"),
        "Links": {
            "ManagerForServers": [ctx.link("Systems", SYSTEM_ID)],
            "ManagerForChassis": [ctx.link("Chassis", CHASSIS_ID)],
        },
        "Actions": {
            "#Manager.Reset": {
                "target": ctx.uri(*base, "Actions", "Manager.Reset"),
                "ResetType@Redfish.AllowableValues": list(MANAGER_RESET_TYPES),
            }
        },
    }


@ROUTER.add("POST", "/Managers/{manager_id}/Actions/Manager.Reset", privilege="ConfigureManager")
def reset_manager(ctx: Ctx, params: dict[str, str]) -> Reply:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    body = ctx.json_body() if ctx.body is not None else {}
    reject_unknown(body, {"ResetType"}, action="Manager.Reset")
    ctx.bmc.reset_manager(str(body.get("ResetType", "GracefulRestart")))
    return Reply(204)


@ROUTER.add("GET", "/Managers/{manager_id}/LogServices")
def log_services(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    return collection(ctx, "LogServiceCollection", "Log Services", ("Managers", MANAGER_ID, "LogServices"), [_LOG_ID])


@ROUTER.add("GET", "/Managers/{manager_id}/LogServices/{log_id}")
def log_service(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    check_id(params["log_id"], _LOG_ID, "LogService")
    base = ("Managers", MANAGER_ID, "LogServices", _LOG_ID)
    return log_service_body(
        ctx,
        base,
        "System Event Log",
        "Event",
        _MAX_RECORDS,
        Actions={"#LogService.ClearLog": {"target": ctx.uri(*base, "Actions", "LogService.ClearLog")}},
    )


@ROUTER.add(
    "POST", "/Managers/{manager_id}/LogServices/{log_id}/Actions/LogService.ClearLog", privilege="ConfigureManager"
)
def clear_log(ctx: Ctx, params: dict[str, str]) -> Reply:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    check_id(params["log_id"], _LOG_ID, "LogService")
    ctx.bmc.sel.clear()
    return Reply(204)


@ROUTER.add("GET", "/Managers/{manager_id}/LogServices/{log_id}/Entries")
def log_entries(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    check_id(params["log_id"], _LOG_ID, "LogService")
    members = [_entry_body(ctx, entry) for entry in ctx.bmc.sel[-_MAX_RECORDS:]]
    return log_entries_body(ctx, ("Managers", MANAGER_ID, "LogServices", _LOG_ID), "Log Entries", members)


@ROUTER.add("GET", "/Managers/{manager_id}/LogServices/{log_id}/Entries/{entry_id}")
def log_entry(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    check_id(params["log_id"], _LOG_ID, "LogService")
    entry = next((e for e in ctx.bmc.sel if e.id == params["entry_id"]), None)
    if entry is None:
        raise RedfishError(404, "ResourceNotFound", "LogEntry", params["entry_id"])
    return _entry_body(ctx, entry)


def _entry_body(ctx: Ctx, entry: SimLogEntry) -> Json:
    return {
        "@odata.id": ctx.uri("Managers", MANAGER_ID, "LogServices", _LOG_ID, "Entries", entry.id),
        "@odata.type": odata_type("LogEntry"),
        "Id": entry.id,
        "Name": f"Log Entry {entry.id}",
        "EntryType": "Event",
        "Severity": entry.severity,
        "Created": entry.created,
        "Message": entry.message,
        "MessageId": entry.message_id,
        "MessageArgs": entry.message_args,
    }


# --- virtual media: one CD drive whose image the BMC fetches by URI ----------------------------------------

_MEDIA_ID = "CD"
_INSERT = "VirtualMedia.InsertMedia"
_EJECT = "VirtualMedia.EjectMedia"


@ROUTER.add("GET", "/Managers/{manager_id}/VirtualMedia")
def virtual_media_collection(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    return collection(
        ctx, "VirtualMediaCollection", "Virtual Media", ("Managers", MANAGER_ID, "VirtualMedia"), [_MEDIA_ID]
    )


@ROUTER.add("GET", "/Managers/{manager_id}/VirtualMedia/{media_id}")
def virtual_media(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    check_id(params["media_id"], _MEDIA_ID, "VirtualMedia")
    dpu = ctx.bmc.dpu
    base = ("Managers", MANAGER_ID, "VirtualMedia", _MEDIA_ID)
    image = dpu.virtual_media_image if dpu.virtual_media_inserted else None
    return {
        "@odata.id": ctx.uri(*base),
        "@odata.type": odata_type("VirtualMedia"),
        "Id": _MEDIA_ID,
        "Name": "Virtual CD",
        "MediaTypes": ["CD", "DVD"],
        "ConnectedVia": "URI" if image else "NotConnected",
        "Image": image,
        "ImageName": image.split("?", 1)[0].rsplit("/", 1)[-1] if image else None,
        "Inserted": dpu.virtual_media_inserted,
        "WriteProtected": True,
        "TransferMethod": "Stream",
        "TransferProtocolType": ("HTTPS" if image.startswith("https://") else "HTTP") if image else None,
        "Actions": {
            f"#{_INSERT}": {"target": ctx.uri(*base, "Actions", _INSERT)},
            f"#{_EJECT}": {"target": ctx.uri(*base, "Actions", _EJECT)},
        },
    }


@ROUTER.add(
    "POST",
    "/Managers/{manager_id}/VirtualMedia/{media_id}/Actions/VirtualMedia.InsertMedia",
    privilege="ConfigureComponents",
)
def insert_media(ctx: Ctx, params: dict[str, str]) -> Reply:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    check_id(params["media_id"], _MEDIA_ID, "VirtualMedia")
    body = ctx.json_body()
    reject_unknown(
        body, {"Image", "Inserted", "WriteProtected", "TransferProtocolType", "TransferMethod"}, action=_INSERT
    )
    image = body.get("Image")
    if image is None:
        raise RedfishError(400, "ActionParameterMissing", _INSERT, "Image")
    if not isinstance(image, str) or not image.startswith(("http://", "https://")):
        raise RedfishError(400, "ActionParameterValueFormatError", image, "Image", _INSERT)
    dpu = ctx.bmc.dpu
    if dpu.virtual_media_inserted:
        raise RedfishError(409, "ResourceInUse")
    dpu.virtual_media_image = image
    dpu.virtual_media_inserted = body.get("Inserted", True) is not False
    return Reply(204)


@ROUTER.add(
    "POST",
    "/Managers/{manager_id}/VirtualMedia/{media_id}/Actions/VirtualMedia.EjectMedia",
    privilege="ConfigureComponents",
)
def eject_media(ctx: Ctx, params: dict[str, str]) -> Reply:
    check_id(params["manager_id"], MANAGER_ID, "Manager")
    check_id(params["media_id"], _MEDIA_ID, "VirtualMedia")
    body = ctx.json_body() if ctx.body is not None else {}
    reject_unknown(body, set(), action=_EJECT)
    dpu = ctx.bmc.dpu
    dpu.virtual_media_inserted = False
    dpu.virtual_media_image = None
    return Reply(204)
