"""A BMC's environmental sensors: temperatures, power, fans, voltages, currents and energy, read from
the Redfish Sensor model (Chassis/<id>/Sensors, Redfish 2018.3 onwards) or, where a chassis offers
none, from the legacy Thermal and Power resources older firmware still serves.

Real BMCs are loose here: a Sensor may omit ReadingType (the units then say what it measures), pad its
strings, report a disabled or absent sensor with no reading, or a fan as a percentage of full speed.
A reading that is not a number, or a sensor that is not enabled, is left out, never taken as zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .client import RedfishClient, RedfishError

# ReadingType -> what is measured; and, for a Sensor without one, its ReadingUnits -> the same
KIND_BY_TYPE = {
    "Temperature": "temperature",
    "Power": "power",
    "Voltage": "voltage",
    "Current": "current",
    "Rotational": "fan",
    "EnergyJoules": "energy",
    "EnergykWh": "energy",
    "EnergyWh": "energy",
    "Frequency": "frequency",
    "Humidity": "humidity",
}
KIND_BY_UNITS = {
    "Cel": "temperature",
    "W": "power",
    "V": "voltage",
    "A": "current",
    "RPM": "fan",
    "{rev}/min": "fan",
    "J": "energy",
    "kW.h": "energy",
    "W.h": "energy",
    "Hz": "frequency",
}


@dataclass(frozen=True)
class SensorReading:
    """One sensor's reading as the BMC reported it. ``kind``: temperature, power, fan, voltage, current,
    energy, frequency, humidity, or the ReadingType as given for anything else; ``unit``: ReadingUnits
    (UCUM) as given, trimmed; ``health``: Status.Health ("" when the BMC says none)."""

    id: str
    name: str
    kind: str
    value: float
    unit: str
    context: str
    health: str
    chassis: str
    source: str = ""  # the property it was read from, as a MetricReport names it (metric_source)
    # the Sensor's Thresholds (LowerCritical, LowerCaution, UpperCaution, UpperCritical), where it has them
    thresholds: tuple[float | None, float | None, float | None, float | None] = (None, None, None, None)

    def health_at(self, value: float) -> str:
        """The Health a reading of `value` has by this sensor's thresholds; where it has none, the Health the
        BMC last gave (a value alone does not say it)."""
        low_critical, low_caution, up_caution, up_critical = self.thresholds
        if not any(t is not None for t in self.thresholds):
            return self.health
        if (up_critical is not None and value >= up_critical) or (low_critical is not None and value <= low_critical):
            return "Critical"
        if (up_caution is not None and value >= up_caution) or (low_caution is not None and value <= low_caution):
            return "Warning"
        return "OK"


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _enabled(resource: dict[str, Any]) -> bool:
    state = _text((resource.get("Status") or {}).get("State")) if isinstance(resource.get("Status"), dict) else ""
    return state in ("", "Enabled")  # Disabled, Absent, StandbyOffline...: no reading to believe


def _health(resource: dict[str, Any]) -> str:
    status = resource.get("Status")
    return _text(status.get("Health")) if isinstance(status, dict) else ""


def sensor_reading(sensor: dict[str, Any], chassis: str = "") -> SensorReading | None:
    """A Sensor resource's reading; None for a sensor that is not enabled or reports no number."""
    value = _number(sensor.get("Reading"))
    if value is None or not _enabled(sensor):
        return None
    reading_type, unit = _text(sensor.get("ReadingType")), _text(sensor.get("ReadingUnits"))
    kind = KIND_BY_TYPE.get(reading_type) or KIND_BY_UNITS.get(unit) or reading_type.lower() or "unknown"
    name = _text(sensor.get("Name"))
    if kind == "percent" and "fan" in (name + _text(sensor.get("Id"))).lower():
        kind = "fan"  # a fan reported as a percentage of its full speed
    return SensorReading(
        id=_text(sensor.get("Id")) or _text(sensor.get("@odata.id")).rsplit("/", 1)[-1],
        name=name,
        kind=kind,
        value=value,
        unit=unit,
        context=_text(sensor.get("PhysicalContext")),
        health=_health(sensor),
        chassis=chassis,
        source=metric_source(_text(sensor.get("@odata.id"))),
        thresholds=_thresholds(sensor),
    )


def _thresholds(sensor: dict[str, Any]) -> tuple[float | None, float | None, float | None, float | None]:
    found = sensor.get("Thresholds")
    given: dict[str, Any] = found if isinstance(found, dict) else {}

    def one(name: str) -> float | None:
        entry = given.get(name)
        return _number(entry.get("Reading")) if isinstance(entry, dict) else None

    return one("LowerCritical"), one("LowerCaution"), one("UpperCaution"), one("UpperCritical")


# a legacy array: (its property, the reading's property, what it measures, its unit; None: ReadingUnits)
_LEGACY: dict[str, tuple[tuple[str, str, str, str | None], ...]] = {
    "Thermal": (("Temperatures", "ReadingCelsius", "temperature", "Cel"), ("Fans", "Reading", "fan", None)),
    "Power": (("PowerControl", "PowerConsumedWatts", "power", "W"), ("Voltages", "ReadingVolts", "voltage", "V")),
}


def _legacy_readings(resource: dict[str, Any], kind: str, chassis: str) -> Iterator[SensorReading]:
    path = _text(resource.get("@odata.id"))
    for array, field, measures, unit in _LEGACY[kind]:
        for index, entry in enumerate(resource.get(array) or []):
            if not isinstance(entry, dict) or not _enabled(entry):
                continue
            value = _number(entry.get(field))
            if value is None:
                continue
            given = unit or _text(entry.get("ReadingUnits")) or "RPM"  # a fan says RPM or Percent
            member = _text(entry.get("MemberId")) or _text(entry.get("Name")) or f"{array.rstrip('s')}{index}"
            yield SensorReading(
                f"{array}/{member}", _text(entry.get("Name")) or _text(entry.get("FanName")), measures, value,
                "%" if given == "Percent" else given, _text(entry.get("PhysicalContext")), _health(entry), chassis,
                metric_source(f"{path}#/{array}/{index}/{field}") if path else "",
            )  # fmt: skip


def metric_source(prop: str) -> str:
    """A reading's property as one key, however a BMC spells it: a Sensor's URI (a MetricReport may add
    `#/Reading`), or a legacy array entry's (`.../Power#/PowerControl/0/PowerConsumedWatts`); trailing
    slashes and padding dropped."""
    path, _, pointer = prop.strip().partition("#")
    path = path.rstrip("/")
    pointer = pointer.strip().rstrip("/")
    if pointer in ("", "/Reading"):
        return path
    return f"{path}#{pointer}"


def thermal_readings(thermal: dict[str, Any], chassis: str = "") -> Iterator[SensorReading]:
    """Temperatures (ReadingCelsius) and fans (Reading in ReadingUnits, RPM or Percent) of a legacy Thermal."""
    return _legacy_readings(thermal, "Thermal", chassis)


def power_readings(power: dict[str, Any], chassis: str = "") -> Iterator[SensorReading]:
    """Power consumed (PowerControl) and voltages (Voltages) of a legacy Power resource."""
    return _legacy_readings(power, "Power", chassis)


async def system_chassis(client: RedfishClient, system_path: str) -> list[str]:
    """The chassis a system's Links name (the DPU's card); where it names none, the service's chassis of
    type Card (a BMC of one DPU has one)."""
    system = await client.get(system_path)
    linked = [
        str(c["@odata.id"])
        for c in (system.get("Links") or {}).get("Chassis") or []
        if isinstance(c, dict) and isinstance(c.get("@odata.id"), str)
    ]
    if linked:
        return linked
    root = await client.get("/redfish/v1", anonymous=True)
    collection = client.link(root, "Chassis")
    if collection is None:
        return []
    return [str(c["@odata.id"]) for c in await client.members(collection) if _text(c.get("ChassisType")) == "Card"]


async def read_chassis(client: RedfishClient, chassis_path: str) -> list[SensorReading]:
    """Every reading of one chassis: its Sensors, else its legacy Thermal and Power. A sensor the BMC
    lists but fails to serve is left out (the others are still read); a chassis that is gone raises."""
    chassis = await client.get(chassis_path)
    name = _text(chassis.get("Id")) or chassis_path.rstrip("/").rsplit("/", 1)[-1]
    sensors = client.link(chassis, "Sensors")
    if sensors is not None:
        readings = []
        for sensor in await _members_tolerant(client, sensors):
            reading = sensor_reading(sensor, name)
            if reading is not None:
                readings.append(reading)
        return readings
    found: list[SensorReading] = []
    for link, parse in (("Thermal", thermal_readings), ("Power", power_readings)):
        path = client.link(chassis, link)
        if path is not None:
            found.extend(parse(await client.get(path), name))
    return found


async def _members_tolerant(client: RedfishClient, collection: str) -> list[dict[str, Any]]:
    try:
        return await client.members(collection)
    except RedfishError as exc:
        if exc.status != 404:
            raise
    # one member missing fails the concurrent fetch: read them one at a time and skip what is not there
    listing = await client.get(collection)
    found = []
    for member in listing.get("Members") or []:
        if isinstance(member, dict) and isinstance(member.get("@odata.id"), str):
            try:
                found.append(await client.get(member["@odata.id"]))
            except RedfishError as exc:
                if exc.status != 404:
                    raise
    return found
