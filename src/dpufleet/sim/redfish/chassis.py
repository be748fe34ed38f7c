"""Chassis/<id>: the DPU card (ChassisType Card) and its sensors; TelemetryService: the same readings in
one MetricReport (CardEnvironment), as a BMC's telemetry service offers them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dpufleet.sim.bmc import CHASSIS_ID, MANAGER_ID, SYSTEM_ID
from dpufleet.sim.devices import PowerState, SimDPU
from dpufleet.sim.messages import RedfishError
from dpufleet.sim.redfish.http import ROUTER, Ctx, Json, check_id, collection, status_ok
from dpufleet.sim.redfish.schema import odata_type


@dataclass(frozen=True)
class _SensorSpec:
    id: str
    name: str
    reading_type: str
    units: str
    context: str


_SENSORS: tuple[_SensorSpec, ...] = (
    _SensorSpec("SoC_Temp", "DPU SoC temperature", "Temperature", "Cel", "CPU"),
    _SensorSpec("NIC_Temp", "Network ASIC temperature", "Temperature", "Cel", "NetworkingDevice"),
    _SensorSpec("Card_Power", "Card power consumption", "Power", "W", "Board"),
)


def _reading(dpu: SimDPU, spec: _SensorSpec) -> float:
    """Temperatures climb with load toward 5 degrees under critical, power toward the card's maximum."""
    thermal, load = dpu.profile.thermal, dpu.sensor_load()
    heat = load * max(0.0, thermal.critical_celsius - 5.0 - thermal.idle_celsius)
    if spec.id == "SoC_Temp":
        return round(dpu.temperature_celsius + heat, 1)
    if spec.id == "NIC_Temp":
        return round(dpu.temperature_celsius - 3.0 + heat * 0.8, 1)
    return round(dpu.power_watts + load * max(0.0, thermal.max_watts - thermal.idle_watts), 1)


def _threshold(dpu: SimDPU, spec: _SensorSpec) -> float:
    if spec.reading_type == "Temperature":
        return dpu.profile.thermal.critical_celsius
    return dpu.profile.thermal.max_watts


CAUTION = 0.9  # a sensor warns from 90% of its critical threshold


def _health(reading: float, critical: float) -> str:
    return "Critical" if reading >= critical else "Warning" if reading >= critical * CAUTION else "OK"


def _padded(dpu: SimDPU, value: str, width: int) -> str:
    return value.ljust(width) if dpu.profile.redfish_style == "bf-23.10" else value


@ROUTER.add("GET", "/Chassis")
def chassis_collection(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(ctx, "ChassisCollection", "Chassis Collection", ("Chassis",), [CHASSIS_ID])


@ROUTER.add("GET", "/Chassis/{chassis_id}")
def chassis(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["chassis_id"], CHASSIS_ID, "Chassis")
    dpu = ctx.bmc.dpu
    return {
        "@odata.id": ctx.uri("Chassis", CHASSIS_ID),
        "@odata.type": odata_type("Chassis"),
        "Id": CHASSIS_ID,
        "Name": f"{dpu.profile.model} card",
        "ChassisType": "Card",
        "Manufacturer": dpu.profile.vendor,
        "Model": dpu.profile.model,
        # a BF-23.10-style BMC pads its card's identity strings to their field width
        "PartNumber": _padded(dpu, dpu.profile.part_number, 24),
        "SerialNumber": _padded(dpu, dpu.serial, 24),
        "PowerState": "On" if dpu.power_state != PowerState.OFF else "Off",
        "Status": status_ok(),
        "Sensors": ctx.link("Chassis", CHASSIS_ID, "Sensors"),
        "Links": {
            "ComputerSystems": [ctx.link("Systems", SYSTEM_ID)],
            "ManagedBy": [ctx.link("Managers", MANAGER_ID)],
        },
    }


@ROUTER.add("GET", "/Chassis/{chassis_id}/Sensors")
def sensors(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["chassis_id"], CHASSIS_ID, "Chassis")
    return collection(ctx, "SensorCollection", "Sensors", ("Chassis", CHASSIS_ID, "Sensors"), [s.id for s in _SENSORS])


@ROUTER.add("GET", "/Chassis/{chassis_id}/Sensors/{sensor_id}")
def sensor(ctx: Ctx, params: dict[str, str]) -> Json:
    check_id(params["chassis_id"], CHASSIS_ID, "Chassis")
    spec = next((s for s in _SENSORS if s.id == params["sensor_id"]), None)
    if spec is None:
        raise RedfishError(404, "ResourceNotFound", "Sensor", params["sensor_id"])
    dpu = ctx.bmc.dpu
    reading = _reading(dpu, spec)
    critical = _threshold(dpu, spec)
    return {
        "@odata.id": ctx.uri("Chassis", CHASSIS_ID, "Sensors", spec.id),
        "@odata.type": odata_type("Sensor"),
        "Id": spec.id,
        "Name": spec.name,
        "ReadingType": spec.reading_type,
        "Reading": reading,
        "ReadingUnits": spec.units,
        "PhysicalContext": spec.context,
        "Status": {"State": "Enabled", "Health": _health(reading, critical)},
        "Thresholds": {"UpperCaution": {"Reading": critical * CAUTION}, "UpperCritical": {"Reading": critical}},
    }


REPORT_ID = "CardEnvironment"


@ROUTER.add("GET", "/TelemetryService")
def telemetry_service(ctx: Ctx, _: dict[str, str]) -> Json:
    return {
        "@odata.id": ctx.uri("TelemetryService"),
        "@odata.type": odata_type("TelemetryService"),
        "Id": "TelemetryService",
        "Name": "Telemetry Service",
        "ServiceEnabled": True,
        "Status": status_ok(),
        "MetricReports": ctx.link("TelemetryService", "MetricReports"),
    }


@ROUTER.add("GET", "/TelemetryService/MetricReports")
def metric_reports(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(
        ctx, "MetricReportCollection", "Metric Reports", ("TelemetryService", "MetricReports"), [REPORT_ID]
    )


@ROUTER.add("GET", "/TelemetryService/MetricReports/{report_id}")
def metric_report(ctx: Ctx, params: dict[str, str]) -> Json:
    """Every sensor's reading now, as real BMCs report them: the value a string, the property the Sensor's URI
    (a BF-23.10-style BMC adds the `#/Reading` pointer)."""
    check_id(params["report_id"], REPORT_ID, "MetricReport")
    dpu = ctx.bmc.dpu
    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    pointer = "#/Reading" if dpu.profile.redfish_style == "bf-23.10" else ""
    values = [
        {
            "MetricId": spec.id,
            "MetricProperty": ctx.uri("Chassis", CHASSIS_ID, "Sensors", spec.id) + pointer,
            "MetricValue": f"{_reading(dpu, spec):g}",
            "Timestamp": stamp,
        }
        for spec in _SENSORS
    ]
    return {
        "@odata.id": ctx.uri("TelemetryService", "MetricReports", REPORT_ID),
        "@odata.type": odata_type("MetricReport"),
        "Id": REPORT_ID,
        "Name": "Card environment",
        "Timestamp": stamp,
        "MetricValues": values,
    }
