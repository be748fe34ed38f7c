"""Systems/<id>: the DPU's Arm SoC as a ComputerSystem of SystemType DPU."""

from __future__ import annotations

from dpufleet.sim.bmc import BOOT_ENABLED, BOOT_TARGETS, CHASSIS_ID, MANAGER_ID, RESET_TYPES, SYSTEM_ID
from dpufleet.sim.devices import PowerState, SimDPU
from dpufleet.sim.messages import RedfishError
from dpufleet.sim.redfish.http import ROUTER, Ctx, Json, Reply, check_id, collection, reject_unknown, status_ok
from dpufleet.sim.redfish.logs import entries as log_entries_body
from dpufleet.sim.redfish.logs import log_service as log_service_body
from dpufleet.sim.redfish.schema import odata_type

_MEMORY_TYPES = {"DDR4": "DDR4", "DDR5": "DDR5", "LPDDR4X": "LPDDR4_SDRAM", "LPDDR5": "LPDDR5_SDRAM"}
_CPU_MANUFACTURERS = {"0x41": "ARM", "0x43": "Cavium", "0x48": "HiSilicon"}


@ROUTER.add("GET", "/Systems")
def systems(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(ctx, "ComputerSystemCollection", "Computer System Collection", ("Systems",), [SYSTEM_ID])


def _powered(ctx: Ctx) -> bool:
    return ctx.bmc.dpu.power_state == PowerState.ON


@ROUTER.add("GET", "/Systems/{system_id}")
def system(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    dpu = ctx.bmc.dpu
    profile = dpu.profile
    uefi = profile.firmware_of_kind("uefi")
    base = ("Systems", SYSTEM_ID)
    return {
        "@odata.id": ctx.uri(*base),
        "@odata.type": odata_type("ComputerSystem"),
        "Id": SYSTEM_ID,
        "Name": f"{profile.model} Arm system",
        **_identity(dpu),
        "UUID": dpu.uuid,
        "HostName": dpu.hostname,
        "BiosVersion": dpu.firmware[uefi.id] if uefi else None,
        "PowerState": str(dpu.power_state),
        "Status": _system_status(ctx),
        "BootProgress": _boot_progress(ctx),
        "Boot": {
            "BootSourceOverrideTarget": dpu.boot_override_target,
            "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
            "BootSourceOverrideEnabled": dpu.boot_override_enabled,
            "BootSourceOverrideMode": dpu.boot_override_mode,
            "HttpBootUri": dpu.http_boot_uri,
        },
        **_summaries(dpu),
        "Processors": ctx.link(*base, "Processors"),
        "Memory": ctx.link(*base, "Memory"),
        "EthernetInterfaces": ctx.link(*base, "EthernetInterfaces"),
        "SecureBoot": ctx.link(*base, "SecureBoot"),
        "LogServices": ctx.link(*base, "LogServices"),
        "Links": {
            "Chassis": [ctx.link("Chassis", CHASSIS_ID)],
            "ManagedBy": [ctx.link("Managers", MANAGER_ID)],
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": ctx.uri(*base, "Actions", "ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
            }
        },
    }


def _identity(dpu: SimDPU) -> Json:
    """Who the system says it is; a BF-23.10-style BMC says "Physical" and leaves the rest to its chassis."""
    profile = dpu.profile
    if profile.redfish_style == "bf-23.10":
        return {"SystemType": "Physical", "SerialNumber": ""}
    return {
        "SystemType": "DPU",
        "Manufacturer": profile.vendor,
        "Model": profile.model,
        "PartNumber": profile.part_number,
        "SerialNumber": dpu.serial,
    }


def _summaries(dpu: SimDPU) -> Json:
    """Processor and memory summaries; a BF-23.10-style BMC reports zeros while the DPU runs."""
    profile = dpu.profile
    if profile.redfish_style == "bf-23.10":
        return {"ProcessorSummary": {"Count": 0, "CoreCount": 0}, "MemorySummary": {"TotalSystemMemoryGiB": 0}}
    return {
        "ProcessorSummary": {"Count": 1, "CoreCount": profile.cpu.cores, "Model": profile.cpu.model},
        "MemorySummary": {"TotalSystemMemoryGiB": round(profile.memory.total_mib / 1024, 2)},
    }


_SEVERITY = {"OK": 0, "Warning": 1, "Critical": 2}


def _system_status(ctx: Ctx) -> Json:
    """Status.Health is the system's own; HealthRollup adds its subordinates (its memory)."""
    dpu = ctx.bmc.dpu
    status = status_ok(_powered(ctx))
    status["Health"] = dpu.health
    status["HealthRollup"] = max((dpu.health, dpu.memory_health), key=lambda h: _SEVERITY.get(h, 0))
    return status


def _boot_progress(ctx: Ctx) -> Json:
    dpu = ctx.bmc.dpu
    progress: Json = {"LastState": dpu.boot_progress, "LastStateTime": dpu.boot_progress_time}
    if dpu.boot_progress == "OEM" and dpu.boot_progress_oem:
        progress["OemLastState"] = dpu.boot_progress_oem
    return progress


@ROUTER.add("PATCH", "/Systems/{system_id}", privilege="ConfigureComponents")
def patch_system(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    body = ctx.json_body()
    reject_unknown(body, {"Boot"})
    boot = body.get("Boot", {})
    if not isinstance(boot, dict):
        raise RedfishError(400, "PropertyValueTypeError", boot, "Boot")
    allowed = {"BootSourceOverrideTarget", "BootSourceOverrideEnabled", "BootSourceOverrideMode", "HttpBootUri"}
    for key in boot:
        if key not in allowed:
            raise RedfishError(400, "PropertyUnknown", f"Boot/{key}")
    target = boot.get("BootSourceOverrideTarget")
    enabled = boot.get("BootSourceOverrideEnabled")
    mode = boot.get("BootSourceOverrideMode")
    if target is not None and target not in BOOT_TARGETS:
        raise RedfishError(400, "PropertyValueNotInList", target, "BootSourceOverrideTarget")
    if enabled is not None and enabled not in BOOT_ENABLED:
        raise RedfishError(400, "PropertyValueNotInList", enabled, "BootSourceOverrideEnabled")
    if mode is not None and mode != "UEFI":  # DPUs boot UEFI only
        raise RedfishError(400, "PropertyValueNotInList", mode, "BootSourceOverrideMode")
    uri = boot.get("HttpBootUri", ...)
    if uri is not ... and uri is not None and not (isinstance(uri, str) and uri.startswith(("http://", "https://"))):
        raise RedfishError(400, "PropertyValueTypeError", uri, "HttpBootUri")
    dpu = ctx.bmc.dpu
    if uri is not ...:
        dpu.http_boot_uri = uri or None
    if target is not None:
        dpu.boot_override_target = target
        if enabled is None and target != "None" and dpu.boot_override_enabled == "Disabled":
            dpu.boot_override_enabled = "Once"
    if enabled is not None:
        dpu.boot_override_enabled = enabled
    return system(ctx, params)


@ROUTER.add("POST", "/Systems/{system_id}/Actions/ComputerSystem.Reset", privilege="ConfigureComponents")
def reset(ctx: Ctx, params: dict[str, str]) -> Reply:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    body = ctx.json_body() if ctx.body is not None else {}
    reject_unknown(body, {"ResetType"}, action="ComputerSystem.Reset")
    reset_type = body.get("ResetType", "On")
    if not isinstance(reset_type, str):
        raise RedfishError(400, "ActionParameterValueFormatError", reset_type, "ResetType", "ComputerSystem.Reset")
    ctx.bmc.reset_system(reset_type)
    return Reply(204)


@ROUTER.add("GET", "/Systems/{system_id}/Processors")
def processors(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    return collection(ctx, "ProcessorCollection", "Processors", ("Systems", SYSTEM_ID, "Processors"), ["CPU0"])


@ROUTER.add("GET", "/Systems/{system_id}/Processors/{cpu_id}")
def processor(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    check_id(params["cpu_id"], "CPU0", "Processor")
    cpu, cpuinfo = ctx.bmc.dpu.profile.cpu, ctx.bmc.dpu.profile.cpuinfo
    return {
        "@odata.id": ctx.uri("Systems", SYSTEM_ID, "Processors", "CPU0"),
        "@odata.type": odata_type("Processor"),
        "Id": "CPU0",
        "Name": "Arm application processor",
        "ProcessorType": "CPU",
        "ProcessorArchitecture": "ARM",
        "InstructionSet": "ARM-A64",
        "Manufacturer": _CPU_MANUFACTURERS.get(cpuinfo.implementer, "ARM"),
        "Model": cpu.model,
        "MaxSpeedMHz": cpuinfo.mhz,
        "TotalCores": cpu.cores,
        "TotalThreads": cpu.cores,
        "Status": status_ok(_powered(ctx)),
    }


@ROUTER.add("GET", "/Systems/{system_id}/Memory")
def memories(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    return collection(ctx, "MemoryCollection", "Memory", ("Systems", SYSTEM_ID, "Memory"), ["DRAM0"])


@ROUTER.add("GET", "/Systems/{system_id}/Memory/{memory_id}")
def memory(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    check_id(params["memory_id"], "DRAM0", "Memory")
    spec = ctx.bmc.dpu.profile.memory
    body: Json = {
        "@odata.id": ctx.uri("Systems", SYSTEM_ID, "Memory", "DRAM0"),
        "@odata.type": odata_type("Memory"),
        "Id": "DRAM0",
        "Name": "On-board DRAM",
        "MemoryType": "DRAM",
        "CapacityMiB": spec.total_mib,
        "OperatingSpeedMhz": spec.speed_mts,
        "Status": _memory_status(ctx),
    }
    if spec.type in _MEMORY_TYPES:
        body["MemoryDeviceType"] = _MEMORY_TYPES[spec.type]
    return body


def _memory_status(ctx: Ctx) -> Json:
    dpu = ctx.bmc.dpu
    if dpu.memory_state != "Enabled":  # a failed or missing DIMM: Absent with Health Critical
        return {"State": dpu.memory_state, "Health": dpu.memory_health}
    status = status_ok(_powered(ctx))
    status["Health"] = dpu.memory_health
    return status


# --- Systems/<id>/LogServices/PostCodes: the POST codes of recent boots ----------------------------------

_POST_LOG = "PostCodes"


@ROUTER.add("GET", "/Systems/{system_id}/LogServices")
def system_log_services(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    return collection(ctx, "LogServiceCollection", "Log Services", ("Systems", SYSTEM_ID, "LogServices"), [_POST_LOG])


@ROUTER.add("GET", "/Systems/{system_id}/LogServices/{log_id}")
def post_code_log(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    check_id(params["log_id"], _POST_LOG, "LogService")
    base = ("Systems", SYSTEM_ID, "LogServices", _POST_LOG)
    return log_service_body(ctx, base, "POST Code Log", "OEM", 500, Description="POST codes of the most recent boots")


def _post_entry(ctx: Ctx, index: int, boot: int, code: str, description: str) -> Json:
    entry_id = f"B{boot}-{index}"
    return {
        "@odata.id": ctx.uri("Systems", SYSTEM_ID, "LogServices", _POST_LOG, "Entries", entry_id),
        "@odata.type": odata_type("LogEntry"),
        "Id": entry_id,
        "Name": f"POST Code {code}",
        "EntryType": "Oem",
        "OemRecordFormat": "PostCode",
        "Severity": "Critical" if description.startswith("ERROR") else "OK",
        "Message": f"Boot Count: {boot}; POST Code: {code}; {description}",
        "MessageArgs": [str(boot), code, description],
    }


def _post_entries(ctx: Ctx) -> list[Json]:
    rows: list[Json] = []
    counts: dict[int, int] = {}
    for boot, code, description in ctx.bmc.dpu.post_codes:
        counts[boot] = counts.get(boot, 0) + 1
        rows.append(_post_entry(ctx, counts[boot], boot, code, description))
    return rows


@ROUTER.add("GET", "/Systems/{system_id}/LogServices/{log_id}/Entries")
def post_code_entries(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    check_id(params["log_id"], _POST_LOG, "LogService")
    return log_entries_body(ctx, ("Systems", SYSTEM_ID, "LogServices", _POST_LOG), "POST Codes", _post_entries(ctx))


@ROUTER.add("GET", "/Systems/{system_id}/LogServices/{log_id}/Entries/{entry_id}")
def post_code_entry(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    check_id(params["log_id"], _POST_LOG, "LogService")
    entry = next((e for e in _post_entries(ctx) if e["Id"] == params["entry_id"]), None)
    if entry is None:
        raise RedfishError(404, "ResourceNotFound", "LogEntry", params["entry_id"])
    return entry


@ROUTER.add("GET", "/Systems/{system_id}/EthernetInterfaces")
def ethernet_interfaces(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    names = [nic.name for nic in ctx.bmc.dpu.nics]
    return collection(
        ctx, "EthernetInterfaceCollection", "Ethernet Interfaces", ("Systems", SYSTEM_ID, "EthernetInterfaces"), names
    )


@ROUTER.add("GET", "/Systems/{system_id}/EthernetInterfaces/{nic_id}")
def ethernet_interface(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    nic = next((n for n in ctx.bmc.dpu.nics if n.name == params["nic_id"]), None)
    if nic is None:
        raise RedfishError(404, "ResourceNotFound", "EthernetInterface", params["nic_id"])
    up = nic.operstate == "up"
    return {
        "@odata.id": ctx.uri("Systems", SYSTEM_ID, "EthernetInterfaces", nic.name),
        "@odata.type": odata_type("EthernetInterface"),
        "Id": nic.name,
        "Name": f"Interface {nic.name}",
        "MACAddress": nic.mac,
        "PermanentMACAddress": nic.mac,
        "SpeedMbps": nic.speed_mbps,
        "MTUSize": nic.mtu,
        "InterfaceEnabled": True,
        "LinkStatus": "LinkUp" if up else "LinkDown",
        "Status": status_ok(up),
    }


@ROUTER.add("GET", "/Systems/{system_id}/SecureBoot")
def secure_boot(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    enabled = ctx.bmc.dpu.secure_boot_enabled
    return {
        "@odata.id": ctx.uri("Systems", SYSTEM_ID, "SecureBoot"),
        "@odata.type": odata_type("SecureBoot"),
        "Id": "SecureBoot",
        "Name": "UEFI Secure Boot",
        "SecureBootEnable": enabled,
        "SecureBootCurrentBoot": "Enabled" if enabled else "Disabled",
        "SecureBootMode": "DeployedMode",
    }


@ROUTER.add("PATCH", "/Systems/{system_id}/SecureBoot", privilege="ConfigureComponents")
def patch_secure_boot(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["system_id"], SYSTEM_ID, "ComputerSystem")
    body = ctx.json_body()
    reject_unknown(body, {"SecureBootEnable"})
    if "SecureBootEnable" in body:
        value = body["SecureBootEnable"]
        if not isinstance(value, bool):
            raise RedfishError(400, "PropertyValueTypeError", value, "SecureBootEnable")
        # Takes effect at the next boot, like real firmware; shown as the pending setting.
        ctx.bmc.dpu.secure_boot_enabled = value
    return secure_boot(ctx, params)
