"""Managers/<id>: the DPU's BMC, with its event log (SEL)."""

from __future__ import annotations

from dpufleet.sim.bmc import CHASSIS_ID, MANAGER_ID, MANAGER_RESET_TYPES, SYSTEM_ID, SimLogEntry, utcnow_iso
from dpufleet.sim.redfish.http import ROUTER, Ctx, Json, Reply, check_id, collection, reject_unknown, status_ok
from dpufleet.sim.redfish.messages import RedfishError
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
    return {
        "@odata.id": ctx.uri(*base),
        "@odata.type": odata_type("LogService"),
        "Id": _LOG_ID,
        "Name": "System Event Log",
        "LogEntryType": "Event",
        "MaxNumberOfRecords": _MAX_RECORDS,
        "OverWritePolicy": "WrapsWhenFull",
        "ServiceEnabled": True,
        "DateTime": utcnow_iso(),
        "DateTimeLocalOffset": "+00:00",
        "Status": status_ok(),
        "Entries": ctx.link(*base, "Entries"),
        "Actions": {"#LogService.ClearLog": {"target": ctx.uri(*base, "Actions", "LogService.ClearLog")}},
    }


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
    # LogEntryCollection is auto-expanded: members are embedded, not linked.
    body = collection(
        ctx, "LogEntryCollection", "Log Entries", ("Managers", MANAGER_ID, "LogServices", _LOG_ID, "Entries"), []
    )
    body["Members"] = [_entry_body(ctx, entry) for entry in ctx.bmc.sel[-_MAX_RECORDS:]]
    body["Members@odata.count"] = len(body["Members"])
    return body


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
