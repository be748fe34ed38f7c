"""The BMC plugin: environmental sensors read from Redfish that no one here wrote (DMTF's SmartNIC mockup, whose
card temperature has no ReadingType and whose fan speed is a percentage; the legacy Thermal and Power of DMTF's
rackmount mockup) and, end to end, from the emulated fleet's BMCs: only a DPU that asks is polled, its
temperature follows the load put on it, a sensor turning Warning and an event its BMC pushes join its event
stream, and a real Prometheus-format endpoint shows the readings."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from discovery.conftest import serve_routes, tree_routes
from dpufleet.api.telemetry import CLASSES_ANNOTATION, INTERVAL_ANNOTATION
from dpufleet.drivers.redfish.client import Credentials, RedfishClient
from dpufleet.drivers.redfish.sensors import read_chassis, sensor_reading, system_chassis
from dpufleet.server.telemetry import TelemetryPlane
from dpufleet.server.telemetry_bmc import metric_of, samples_of
from dpufleet.sim.runner import SimRunning, sim_in_thread
from dpufleet.vendors.catalog import MODELS_DIR, builtin_catalog, load_catalog
from dpufleet.vendors.schema import SensorMapping
from provisioning.conftest import Operator, discover, fleet_options
from support.net import poll, wait_until
from support.otlp import Collector
from support.server import RunningServer, threaded_server
from support.telemetry import Stream
from support.webhook import Receiver

USER, PASSWORD = "mockup", "mockup-password"


async def _read(url: str, system: str | None, chassis: str | None = None) -> list[Any]:
    async with RedfishClient(url, Credentials(USER, PASSWORD)) as client:
        paths = await system_chassis(client, system) if system else [chassis or ""]
        found = []
        for path in paths:
            found.extend(await read_chassis(client, path))
        return found


def test_the_dmtf_smartnic_cards_sensors_are_read_as_the_common_metric_set() -> None:
    service = serve_routes(tree_routes("dmtf-public-smartnic"), basic_auth=(USER, PASSWORD))
    try:
        readings = asyncio.run(_read(service.url, "/redfish/v1/Systems/Card1-SoC"))
    finally:
        service.stop()
    by_id = {r.id: r for r in readings}
    assert set(by_id) == {"CardTemp", "CPUFan1", "TotalPower"}
    # CardTemp says no ReadingType: its units (Cel) say it is a temperature
    assert (by_id["CardTemp"].kind, by_id["CardTemp"].value, by_id["CardTemp"].context) == (
        "temperature", 37.0, "Accelerator",
    )  # fmt: skip
    samples = {s["attributes"]["hw.id"]: s for s in samples_of(readings, 1)}
    assert samples["Card1/CardTemp"]["name"] == "hw.temperature" and samples["Card1/CardTemp"]["unit"] == "Cel"
    # a fan given as a percentage of its full speed is a speed ratio, not revolutions per minute
    fan = samples["Card1/CPUFan1"]
    assert (fan["name"], fan["unit"], fan["value"]) == ("hw.fan.speed_ratio", "1", 0.8)
    power = samples["Card1/TotalPower"]
    assert (power["name"], power["unit"], power["value"]) == ("hw.power", "W", 374.0)
    assert power["attributes"]["hw.sensor_location"] == "Accelerator" and power["attributes"]["source"] == "bmc"


def test_the_legacy_thermal_and_power_of_a_dmtf_mockup_are_read_and_a_disabled_sensor_is_left_out() -> None:
    routes = tree_routes("dmtf-public-rackmount1-legacy")
    routes["/redfish/v1/Chassis/1U"] = (200, "application/json", json.dumps({
        "@odata.id": "/redfish/v1/Chassis/1U", "Id": "1U", "ChassisType": "RackMount",
        "Thermal": {"@odata.id": "/redfish/v1/Chassis/1U/Thermal"},
        "Power": {"@odata.id": "/redfish/v1/Chassis/1U/Power"},
    }).encode())  # fmt: skip
    service = serve_routes(routes, basic_auth=(USER, PASSWORD))
    try:
        readings = asyncio.run(_read(service.url, None, "/redfish/v1/Chassis/1U"))
    finally:
        service.stop()
    names = {(r.kind, r.name): r.value for r in readings}
    assert names[("temperature", "CPU1 Temp")] == 41.0
    assert ("temperature", "CPU2 Temp") not in names  # Status.State Disabled, no reading: not a zero
    assert names[("fan", "BaseBoard System Fan")] == 2100.0
    assert names[("power", "System Input Power")] == 344.0
    assert names[("voltage", "VRM1 Voltage")] == 12.0
    fan = next(r for r in readings if r.kind == "fan")
    assert metric_of(fan)[:2] == ("hw.fan.speed", "rpm")


@pytest.mark.parametrize(
    "sensor",
    [
        {"Id": "T", "Reading": None, "ReadingUnits": "Cel"},  # no reading now
        {"Id": "T", "Reading": "N/A", "ReadingUnits": "Cel"},
        {"Id": "T", "Reading": True, "ReadingUnits": "Cel"},
        {"Id": "T", "Reading": 0, "ReadingUnits": "Cel", "Status": {"State": "Absent"}},
    ],
)
def test_a_sensor_without_a_believable_reading_is_left_out_not_taken_as_zero(sensor: dict[str, Any]) -> None:
    assert sensor_reading(sensor) is None


def test_padded_strings_are_trimmed_and_an_unknown_reading_type_is_kept_as_given() -> None:
    reading = sensor_reading({"Id": "SoC_Temp  ", "Name": " SoC ", "Reading": 51, "ReadingType": "Temperature",
                              "ReadingUnits": "Cel ", "Status": {"State": "Enabled", "Health": "OK  "}})  # fmt: skip
    assert reading is not None and (reading.id, reading.name, reading.unit, reading.health) == (
        "SoC_Temp", "SoC", "Cel", "OK",
    )  # fmt: skip
    odd = sensor_reading({"Id": "LiquidFlow", "Reading": 3.5, "ReadingType": "LiquidFlowLPM", "ReadingUnits": "L/min"})
    assert odd is not None and metric_of(odd)[:2] == ("dpufleet.bmc.liquidflowlpm", "L/min")


# --- end to end: the emulated fleet's BMCs ----------------------------------------------------------------------


@dataclasses.dataclass
class Lab:
    api: RunningServer
    op: Operator
    running: SimRunning
    names: list[str]
    collector: Collector  # the OTLP receiver the control plane pushes to

    @property
    def plane(self) -> TelemetryPlane:
        assert self.api.server is not None and self.api.server.state.telemetry is not None
        return self.api.server.state.telemetry


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    collector = Collector()
    with (
        threaded_server(
            tmp_path_factory.mktemp("api") / "data", telemetry_bus="embedded", otlp_endpoint=collector.url
        ) as api,
        api.client() as http,
    ):
        options = dataclasses.replace(fleet_options(api, tmp_path_factory.mktemp("fleet"), hosts=1), dpus_per_host=2)
        with sim_in_thread(options) as running:
            op = Operator(http)
            names = discover(op, running)
            built = Lab(api, op, running, names, collector)
            wait_until(built.plane.connected.is_set, timeout=15, what="the aggregator on the embedded nats-server")
            assert built.plane.bmc is not None
            built.plane.bmc.floor = 0.2  # the tests' DPUs are polled at their interval, not the 15 s floor
            yield built
    collector.close()


def _annotate(lab: Lab, name: str, classes: str) -> None:
    lab.op.patch("dpus", name, {"metadata": {"annotations": {CLASSES_ANNOTATION: classes, INTERVAL_ANNOTATION: "0.3"}}})


def _sim_load(lab: Lab, dpu: str, body: Any) -> httpx.Response:
    return httpx.post(
        f"{lab.running.control_url}/sim/v1/devices/{dpu}/load", json=body,
        headers={"Authorization": f"Bearer {lab.running.control_token}"}, verify=False,
    )  # fmt: skip


def test_only_a_dpu_that_asks_is_polled_and_its_temperature_follows_its_load(lab: Lab) -> None:
    watched, quiet = lab.names
    other = next(d.serial for d in lab.running.fleet.dpus if f"dpu-{d.serial.lower()}" == quiet)
    stream = Stream(lab.op.http, "/telemetry/v1/projects/default/watch", {"class": "environmental,events"})
    _annotate(lab, watched, "environmental,events")
    _annotate(lab, quiet, "load")  # asks for no environmental class: its BMC is never read for it

    def soc(minimum: float = 0.0) -> list[dict[str, Any]]:
        return [s for s in stream.samples() if s["name"] == "hw.temperature" and s.get("dpu") == watched
                and s["attributes"]["hw.id"].endswith("SoC_Temp") and s["value"] >= minimum]  # fmt: skip

    idle = poll("the DPU's SoC temperature read from its BMC", soc, bool, 20)[-1]
    assert idle["attributes"]["source"] == "bmc" and idle["unit"] == "Cel"
    assert {s["name"] for s in stream.samples() if s.get("dpu") == watched} >= {"hw.temperature", "hw.power"}
    assert lab.plane.bmc is not None and set(lab.plane.bmc.targets) == {("default", watched)}
    assert not lab.plane.series.get(other) or not lab.plane.series[other].local

    # a bad load is refused naming it, and changes nothing
    refused = _sim_load(lab, watched, {"load": 3})
    assert refused.status_code == 400 and "load" in refused.json()["error"]
    # flat out: the SoC heats past its caution threshold; the sensor's Health turning Warning is an event
    assert _sim_load(lab, watched, {"load": 1.0}).status_code == 200
    hot = poll("the SoC temperature rising with load", lambda: soc(idle["value"] + 20), bool, 20)[-1]
    assert hot["value"] > idle["value"] + 20

    def warned() -> list[dict[str, Any]]:
        return [s for s in stream.samples() if s["name"] == "dpufleet.event.bmc" and s.get("severity") == "warning"
                and s["attributes"].get("source") == "bmc-sensor"]  # fmt: skip

    event = poll("the sensor's Warning as an event", warned, bool, 20)[0]
    assert event["dpu"] == watched and "OK -> Warning" in event["body"]
    _sim_load(lab, watched, {"load": 0.0})

    # an event the BMC pushes (as the Redfish event receiver adds it) joins the DPU's event stream
    bmc_name = lab.op.get("dpus", watched)["status"]["bmc"]
    assert lab.api.server is not None
    lab.api.server.services.inbox.add("default", bmc_name, "Fan 2 failed", "EventLog.1.0.FanFailed", "Critical")

    def pushed() -> list[dict[str, Any]]:
        return [s for s in stream.samples() if s["name"] == "dpufleet.event.bmc" and s.get("body") == "Fan 2 failed"]

    got = poll("the pushed BMC event on the watch", pushed, bool, 10)[0]
    assert got["severity"] == "critical" and got["attributes"]["message.id"] == "EventLog.1.0.FanFailed"

    # the fleet endpoint shows the readings, named as Prometheus names them
    federate = lab.op.http.get("/telemetry/v1/federate").text
    assert any(line.startswith("hw_temperature_celsius{") and f'dpu="{watched}"' in line and 'source="bmc"' in line
               for line in federate.splitlines())  # fmt: skip
    assert f'dpufleet_telemetry_samples_read_by_control_plane_total{{project="default",dpu="{watched}"' in federate
    # and OTLP: the readings as the DPU's metrics, the sensor's Warning and the pushed event as log records
    points = poll("the BMC's readings at the OTLP collector", lambda: lab.collector.metric_points("hw.temperature"),
                  lambda found: any(p.get("source") == "bmc" for p in found), 15)  # fmt: skip
    assert any(p.get("hw.sensor_location") == "CPU" for p in points)

    def bmc_records() -> list[tuple[dict[str, str], dict[str, str], str, int, str]]:
        return [r for r in lab.collector.log_records() if r[4] == "dpufleet.event.bmc"]

    records = poll("the BMC's events at the OTLP collector", bmc_records,
                   lambda found: {r[1].get("source") for r in found} >= {"bmc-sensor", "redfish-event"}, 15)  # fmt: skip
    assert all(r[0]["dpufleet.dpu"] == watched for r in records)
    figures = lab.op.http.get("/telemetry/v1/aggregator").json()
    assert figures["bmcPolls"] >= 2 and figures["bmcSamples"] >= 6 and figures["bmcPushedEvents"] >= 1
    # after the first crawl of its sensors, the BMC's MetricReport answers the polls (one request, not one
    # per sensor), and the Warning above was judged from a reported value by the sensor's thresholds
    assert figures["bmcReportReads"] >= 1

    # asking no more stops the polling
    _annotate(lab, watched, "load")
    wait_until(lambda: not lab.plane.bmc.targets if lab.plane.bmc else True, timeout=10, what="the DPU unpolled")
    polls = lab.op.http.get("/telemetry/v1/aggregator").json()["bmcPolls"]  # once it asks no more
    time.sleep(1.0)
    assert lab.op.http.get("/telemetry/v1/aggregator").json()["bmcPolls"] <= polls + 1  # one in flight at most


def test_an_alert_rule_fires_on_a_hot_soc_notifies_its_webhook_and_resolves_when_it_cools(lab: Lab) -> None:
    watched = lab.names[0]
    receiver = Receiver()
    try:
        rule = {
            "kind": "AlertRule",
            "metadata": {"name": "soc-hot"},
            "spec": {"metric": "hw.temperature", "match": {"hw.sensor_location": "CPU"}, "condition": "above",
                     "threshold": 90, "forSeconds": 0.5, "groupWaitSeconds": 0.2, "severity": "critical",
                     "webhook": {"url": receiver.url}, "description": "SoC hot"},
        }  # fmt: skip
        lab.op.create("alertrules", rule)
        _annotate(lab, watched, "environmental,events")
        assert _sim_load(lab, watched, {"load": 1.0}).status_code == 200
        poll("the firing notification", lambda: [b for b in receiver.bodies if b["status"] == "firing"], bool, 30)
        fired = next(b for b in receiver.bodies if b["status"] == "firing")
        [alert] = fired["alerts"]
        assert alert["labels"]["dpu"] == watched and alert["labels"]["severity"] == "critical"
        assert float(alert["annotations"]["value"]) > 90
        shown = poll("the rule's status", lambda: lab.op.get("alertrules", "soc-hot") or {},
                     lambda d: (d.get("status") or {}).get("firing") == 1, 10)  # fmt: skip
        assert shown["status"]["alerts"][0]["dpu"] == watched
        # it cools: the alert resolves, and the receiver hears so
        assert _sim_load(lab, watched, {"load": 0.0}).status_code == 200
        poll("the resolved notification", lambda: [b for b in receiver.bodies if b["status"] == "resolved"], bool, 30)
        resolved = next(b for b in receiver.bodies if b["status"] == "resolved")
        assert resolved["alerts"][0]["status"] == "resolved" and resolved["alerts"][0]["labels"]["dpu"] == watched
        figures = lab.op.http.get("/telemetry/v1/aggregator").json()
        assert figures["alertsFired"] >= 1 and figures["alertsResolved"] >= 1 and figures["alertNotifications"] >= 2
        # the alert's transitions reach the OTLP collector as log records of the DPU
        states = poll("the alert at the OTLP collector",
                      lambda: {r[1].get("state"): r for r in lab.collector.log_records() if r[4] == "dpufleet.alert"},
                      lambda found: {"firing", "resolved"} <= set(found), 15)  # fmt: skip
        assert states["firing"][0]["dpufleet.dpu"] == watched and states["firing"][1]["alertname"] == "soc-hot"
        # a rule that makes no sense is refused, naming the field
        bad = lab.op.http.post(
            "/apis/dpufleet.io/v1alpha1/projects/default/alertrules",
            json={"kind": "AlertRule", "metadata": {"name": "bad"}, "spec": {"metric": "m"}},
        )
        assert bad.status_code == 422 and "threshold" in bad.text
    finally:
        receiver.stop()
        _annotate(lab, watched, "load")


def test_a_rollup_sums_up_a_metric_per_host_and_per_vendor_and_refuses_a_bad_grouping(lab: Lab, tmp_path: Path) -> None:
    host = lab.running.fleet.hosts[0].id
    for name in lab.names:
        lab.op.patch("dpus", name, {"spec": {"hostRef": host}})
        _annotate(lab, name, "environmental")
    vendors = {d["status"]["vendor"] for d in lab.op.items("dpus")}
    try:

        def power() -> dict[str, Any]:
            return lab.op.http.get("/telemetry/v1/projects/default/rollup",
                                   params={"metric": "hw.power", "by": "host"}).json()  # fmt: skip

        body = poll("both DPUs' power in one host's group", power,
                    lambda b: [g["dpus"] for g in b["groups"]] == [2], 20)  # fmt: skip
        (group,) = body["groups"]
        assert group["group"] == host and group["series"] == 2
        assert group["sum"] == pytest.approx(group["mean"] * 2) and group["min"] <= group["max"]
        by_vendor = lab.op.http.get("/telemetry/v1/projects/default/rollup",
                                    params={"metric": "hw.temperature", "by": "vendor",
                                            "match": "hw.sensor_location=CPU"}).json()  # fmt: skip
        assert [g["group"] for g in by_vendor["groups"]] == sorted(vendors)
        assert sum(g["series"] for g in by_vendor["groups"]) == 2  # one SoC sensor per DPU
        bad = lab.op.http.get("/telemetry/v1/projects/default/rollup", params={"metric": "hw.power", "by": "rack"})
        assert bad.status_code == 400 and "by:" in bad.json()["message"] and "label:<key>" in bad.json()["message"]
        # the CLI prints the same as a table
        env = {**os.environ, "DPUFLEET_SERVER": lab.api.url, "DPUFLEET_TOKEN": lab.api.token,
               "DPUFLEET_CONFIG": str(tmp_path / "no-config")}  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "dpufleet.main", "telemetry", "rollup", "--metric", "hw.power"],
                              env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        header, row = done.stdout.splitlines()
        assert header.split() == ["GROUP", "DPUS", "SERIES", "SUM", "MIN", "MEAN", "MAX"] and row.split()[:2] == [
            host,
            "2",
        ]
    finally:
        for name in lab.names:
            _annotate(lab, name, "load")


def test_the_vendor_catalog_tells_what_a_vendors_own_sensor_is() -> None:
    """A BMC whose sensor says nothing usable (an OEM id, millidegrees, no location) mapped by the model's entry."""
    odd = sensor_reading({"Id": "oem_asic_t", "Reading": 71500, "ReadingType": "OemTemp", "ReadingUnits": "mCel"})
    plain = sensor_reading({"Id": "Card_Power", "Reading": 60, "ReadingType": "Power", "ReadingUnits": "W"})
    assert odd is not None and plain is not None
    mappings = [
        SensorMapping(sensor="oem_*_t", metric="hw.temperature", unit="Cel", scale=0.001, location="nic", name="ASIC"),
        SensorMapping(sensor="card_power", location="board"),  # matched without regard to case
    ]
    hot, power = samples_of([odd, plain], 1, mappings)
    assert (hot["name"], hot["unit"], hot["value"]) == ("hw.temperature", "Cel", pytest.approx(71.5))
    assert hot["attributes"]["hw.type"] == "temperature" and hot["attributes"]["hw.sensor_location"] == "nic"
    assert hot["attributes"]["hw.name"] == "ASIC" and hot["attributes"]["hw.id"] == "oem_asic_t"
    assert (power["name"], power["attributes"]["hw.sensor_location"]) == ("hw.power", "board")
    # without the catalog's word the OEM sensor is kept as given, not guessed at
    assert samples_of([odd], 1)[0]["name"] == "dpufleet.bmc.oemtemp"
    with pytest.raises(ValueError, match="metric and unit go together"):
        SensorMapping(sensor="x", metric="hw.power")


def test_the_built_in_bluefield_3_entries_place_its_documented_sensors_and_keep_its_envelope_off_hw_power() -> None:
    """BlueField-3's card sensors by the names NVIDIA's BMC documentation lists (bluefield_temp, p0_temp,
    soc_power, power_envelope...): each gets its location, and the power envelope (a limit) and its
    deviation (a difference) are not reported as power drawn, which would count the card's power thrice."""
    def sensor(sid: str, kind: str, units: str, value: float) -> Any:
        return sensor_reading({"@odata.id": f"/redfish/v1/Chassis/Card1/Sensors/{sid}", "Id": sid, "Name": sid,
                               "Reading": value, "ReadingType": kind, "ReadingUnits": units}, "Card1")  # fmt: skip

    readings = [sensor("bluefield_temp", "Temperature", "Cel", 64), sensor("p0_temp", "Temperature", "Cel", 41),
                sensor("soc_power", "Power", "W", 52), sensor("power_envelope", "Power", "W", 75),
                sensor("power_envelope_deviation", "Power", "W", -23), sensor("3_3V", "Voltage", "V", 3.31)]  # fmt: skip
    model = builtin_catalog().get("nvidia-bluefield-3")
    assert model is not None
    got = {s["attributes"]["hw.id"].split("/")[-1]: s for s in samples_of(readings, 1, model.sensors)}
    assert got["bluefield_temp"]["attributes"]["hw.sensor_location"] == "soc"
    assert got["p0_temp"]["attributes"]["hw.sensor_location"] == "port0"
    assert [s["value"] for s in got.values() if s["name"] == "hw.power"] == [52], "only what the card draws"
    assert (got["power_envelope"]["name"], got["power_envelope"]["unit"]) == ("dpufleet.bmc.power_limit", "W")
    assert got["power_envelope_deviation"]["name"] == "dpufleet.bmc.power_over_limit"
    assert got["3_3V"]["name"] == "hw.voltage" and "hw.sensor_location" not in got["3_3V"]["attributes"]


def test_a_site_catalog_entry_maps_the_emulated_bmcs_sensors(lab: Lab, tmp_path: Path) -> None:
    watched = lab.names[0]
    model = (lab.op.get("dpus", watched) or {})["status"]["recognition"]["model"]
    source = yaml.safe_load((MODELS_DIR / f"{model}.yaml").read_text())
    source["sensors"] = [{"sensor": "NIC_*", "location": "nic", "name": "network ASIC"}]
    (tmp_path / f"{model}.yaml").write_text(yaml.safe_dump(source))
    assert lab.plane.bmc is not None
    lab.plane.bmc.catalog = load_catalog([tmp_path])
    stream = Stream(lab.op.http, "/telemetry/v1/projects/default/watch", {"class": "environmental"})
    _annotate(lab, watched, "environmental")
    try:

        def nic() -> list[dict[str, Any]]:
            return [
                s for s in stream.samples() if s.get("dpu") == watched and s["attributes"]["hw.id"].endswith("NIC_Temp")
            ]

        (first, *_) = poll("the NIC sensor, mapped", nic, bool, 20)
        assert first["attributes"]["hw.sensor_location"] == "nic" and first["attributes"]["hw.name"] == "network ASIC"
    finally:
        lab.plane.bmc.catalog = builtin_catalog()
        _annotate(lab, watched, "load")
