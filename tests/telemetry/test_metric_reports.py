"""MetricReports: a BMC's TelemetryService readings in one document. Read from DMTF's public-telemetry
mockup (no one here wrote it) and from the emulated BMC; the BMC plugin reads them instead of a request
per sensor only when they cover every reading the sensors' crawl found, and judges each value's Health
by its sensor's thresholds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from discovery.conftest import serve_routes, tree_routes
from dpufleet.drivers.redfish.client import Credentials, RedfishClient
from dpufleet.drivers.redfish.metric_reports import metric_reports, read_reports, report_values
from dpufleet.drivers.redfish.sensors import metric_source, read_chassis, sensor_reading

USER, PASSWORD = "mockup", "mockup-password"
POWER = "/redfish/v1/Chassis/Tray_1/Power#/PowerControl/0/PowerConsumedWatts"


def test_dmtfs_telemetry_mockup_reports_are_read_latest_value_per_property() -> None:
    service = serve_routes(tree_routes("dmtf-public-telemetry"), basic_auth=(USER, PASSWORD))

    async def read() -> tuple[list[str], dict[str, Any], list[Any]]:
        async with RedfishClient(service.url, Credentials(USER, PASSWORD)) as client:
            reports = await metric_reports(client)
            return reports, await read_reports(client, reports), await read_chassis(client, "/redfish/v1/Chassis/Tray_1")

    try:
        reports, values, readings = asyncio.run(read())
    finally:
        service.stop()
    assert [r.rsplit("/", 1)[-1] for r in reports] == [
        "AvgPlatformPowerUsage", "PlatformPowerUsage", "PowerMetrics", "PowerMetricStats",
    ]  # fmt: skip
    assert values[POWER].value == 107.0, "three values over three hours: the latest counts (strings, as sent)"
    # the crawl's power reading is keyed by the same property, so the report's value is its value
    power = next(r for r in readings if r.kind == "power")
    assert power.source == POWER and power.value == 8000.0
    # the hour's statistics and the pointer that names no array are not readings the crawl knows
    sources = {r.source for r in readings}
    assert "/redfish/v1/Chassis/Tray_1/Power#/0/PowerConsumedWatts" in values
    assert not sources & {k for k in values if k != POWER}
    assert not all(r.source in values for r in readings), "temperatures and voltages are in no report: crawled"


def test_values_that_are_not_numbers_are_left_out_and_an_undated_value_does_not_replace_a_dated_one() -> None:
    sensor = "/redfish/v1/Chassis/Card1/Sensors/SoC"
    report = {"MetricValues": [
        {"MetricProperty": f" {sensor}#/Reading ", "MetricValue": " 41.5 ", "Timestamp": "2026-12-07T10:00:00Z"},
        {"MetricProperty": sensor, "MetricValue": "40", "Timestamp": "2026-12-07T09:59:00Z"},
        {"MetricProperty": sensor, "MetricValue": "39"},
        {"MetricProperty": "/redfish/v1/Chassis/Card1/Sensors/Fan", "MetricValue": "OK"},
        {"MetricProperty": "/redfish/v1/Chassis/Card1/Sensors/Volt", "MetricValue": "nan"},
        {"MetricProperty": "/redfish/v1/Chassis/Card1/Sensors/Empty", "MetricValue": ""},
        {"MetricValue": "12"},
        "not an object",
    ]}  # fmt: skip
    assert {k: v.value for k, v in report_values(report).items()} == {sensor: 41.5}
    assert metric_source(f"{sensor}/") == metric_source(f"{sensor}#/Reading") == sensor


@pytest.mark.parametrize(
    ("value", "health"), [(50.0, "OK"), (85.0, "Warning"), (96.0, "Critical"), (4.0, "Warning"), (1.0, "Critical")]
)
def test_a_reported_value_is_judged_by_its_sensors_thresholds(value: float, health: str) -> None:
    sensor = {"@odata.id": "/redfish/v1/Chassis/C/Sensors/T", "Id": "T", "Reading": 50, "ReadingType": "Temperature",
              "ReadingUnits": "Cel", "Status": {"State": "Enabled", "Health": "OK"},
              "Thresholds": {"UpperCaution": {"Reading": 85}, "UpperCritical": {"Reading": 95},
                             "LowerCaution": {"Reading": 5}, "LowerCritical": {"Reading": 2}}}  # fmt: skip
    reading = sensor_reading(sensor, "C")
    assert reading is not None and reading.health_at(value) == health
    bare = sensor_reading({**sensor, "Thresholds": None, "Status": {"State": "Enabled", "Health": "Warning"}}, "C")
    assert bare is not None and bare.health_at(1.0) == "Warning", "no thresholds: the BMC's own Health stays"
