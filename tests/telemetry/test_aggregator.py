"""The aggregator's side: what it takes in (the same as the agent's model), the bus's authorization following
the DPU objects, and the aggregator's own figures (taken in, refused, ingest lag) on /metrics and its endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
from pydantic import ValidationError

from dpufleet.api.telemetry import Batch, BatchError, TelemetryClass, encode_batch, parse_batch
from dpufleet.server.telemetry import DPUSeries, _first_error, _keep_frames, _keep_latest, read_tables, whole_batch
from support.net import wait_until
from support.telemetry import BASE, Plane, telemetry_plane

GOOD_SAMPLE = {"name": "system.memory.usage", "unit": "By", "value": 1.0, "time": 1, "attributes": {"a": "b"}}


@pytest.mark.parametrize(
    "batch",
    [
        {"serial": "S1", "seq": 0, "class": "load", "samples": [GOOD_SAMPLE]},
        {"serial": "S1", "seq": 3, "class": "logs", "samples": [{"name": "syslog", "time": 5, "body": "x"}]},
        {"serial": "S1", "seq": -1, "class": "load", "samples": []},
        {"serial": "S1", "seq": 0, "class": "weather", "samples": []},
        {"serial": "S1", "seq": 0, "class": "load", "samples": [{**GOOD_SAMPLE, "extra": 1}]},
        {"serial": "S1", "seq": 0, "class": "load", "samples": [{**GOOD_SAMPLE, "name": ""}]},
        {"serial": "S1", "seq": 0, "class": "load", "samples": [{**GOOD_SAMPLE, "name": "n" * 201}]},
        {"serial": "S1", "seq": 0, "class": "load", "samples": [{**GOOD_SAMPLE, "unit": "u" * 33}]},
        {"serial": "S1", "seq": 0, "class": "load", "samples": [{"name": "no-time"}]},
        {"serial": "S1", "seq": 0, "class": "logs", "samples": [{"name": "l", "time": 1, "body": "b" * 4097}]},
        {"serial": "S1", "seq": 0, "class": "load", "samples": [{**GOOD_SAMPLE, "attributes": {"a": 1}}]},
        {"serial": "S1", "seq": 0, "class": "load", "samples": [], "more": True},
        {"serial": "S1", "class": "load", "samples": []},
    ],
)
def test_the_aggregator_takes_in_exactly_what_the_agents_model_allows(batch: dict[str, Any]) -> None:
    data = json.dumps(batch).encode()
    try:
        Batch.model_validate_json(data)
        model_takes = True
    except ValidationError:
        model_takes = False
    try:
        parse_batch(data)
        aggregator_takes = True
    except ValidationError:
        aggregator_takes = False
    assert aggregator_takes == model_takes


def _take_in(series: DPUSeries, data: bytes) -> list[dict[str, Any]]:
    """A batch taken in as the aggregator takes it: the latest values kept; its samples one by one."""
    batch, lines = parse_batch(data)
    tables = read_tables(series, batch, lines)
    _keep_frames(series, batch, tables)
    _keep_latest(series, batch["samples"])
    return [dict(sample) for sample in whole_batch(batch, tables)["samples"]]


MIXED = [
    {"name": "system.network.io", "unit": "By", "value": 7.0, "time": 2_000_000,
     "attributes": {"network.io.direction": "receive", "network.interface.name": "p0"}},
    {"name": "system.network.io", "unit": "By", "value": 9.0, "time": 2_000_000,
     "attributes": {"network.interface.name": "p0", "network.io.direction": "transmit"}},
    {"name": "system.memory.usage", "unit": "By", "value": 3.5, "time": 2_000_000},
    {"name": "hw.temperature", "unit": "Cel", "value": 61.0, "time": 3_000_000, "attributes": {"hw.id": "soc"}},
    {"name": "syslog", "time": 2_500_000, "body": "link up", "severity": "info", "attributes": {"ident": "k"}},
]  # fmt: skip


def test_a_batch_in_frames_is_taken_in_as_the_same_samples_one_by_one() -> None:
    framed, whole = DPUSeries("default"), DPUSeries("default")
    data = encode_batch("S1", 4, TelemetryClass.LOAD, MIXED)
    assert data.count(b"\n") == 2  # two collection times: two series tables after the batch's line
    plain = json.dumps({"serial": "S1", "seq": 4, "class": "load", "samples": MIXED}).encode()
    taken = _take_in(framed, data)

    def canonical(samples: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(sample, sort_keys=True) for sample in samples)

    assert canonical(taken) == canonical(_take_in(whole, plain))
    assert framed.latest == whole.latest and len(framed.latest) == 4  # the log line is no series
    # attributes sent in another order are the same series
    assert framed.latest[
        ("system.network.io", (("network.interface.name", "p0"), ("network.io.direction", "receive")))
    ] == (7.0, 2, "By")


def test_a_series_table_is_read_once_and_read_again_only_when_its_bytes_change() -> None:
    series = DPUSeries("default")

    def batch(seq: int, interfaces: int, value: float) -> bytes:
        samples = [{"name": "system.network.io", "unit": "By", "value": value + i, "time": seq * 1_000_000,
                    "attributes": {"network.interface.name": f"p{i}"}} for i in range(interfaces)]  # fmt: skip
        return encode_batch("S1", seq, TelemetryClass.LOAD, samples)

    _take_in(series, batch(1, 2, 10.0))
    first = series.tables[("load", 0)]
    _take_in(series, batch(2, 2, 20.0))
    assert series.tables[("load", 0)] is first  # the same bytes: only the values were read
    _take_in(series, batch(3, 3, 30.0))  # a new interface: a new table
    assert series.tables[("load", 0)] is not first and len(series.tables[("load", 0)].keys) == 3
    got = {attrs[0][1]: value for (_, attrs), (value, _, _) in series.latest.items()}
    assert got == {"p0": 30.0, "p1": 31.0, "p2": 32.0}


def _lines(head: dict[str, Any], *tables: Any) -> bytes:
    return b"\n".join([json.dumps(head).encode(), *(json.dumps(t).encode() for t in tables)])


FRAME = {"time": 1, "table": 0, "values": [1.0, 2.0]}
HEAD = {"serial": "S1", "seq": 1, "class": "load", "samples": []}
TABLE = [["m", "By", {"a": "1"}], ["m", "By", {"a": "2"}]]


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (_lines({**HEAD, "frames": [{**FRAME, "values": [1.0]}]}, TABLE), "frames[0].values: 1 values for a series table of 2 series"),
        (_lines({**HEAD, "frames": [{**FRAME, "table": 1}]}, TABLE), "frames[0].table: 1 names no series table (the batch has 1)"),
        (_lines({**HEAD, "frames": [FRAME]}), "frames[0].table: 0 names no series table (the batch has 0)"),
        (_lines({**HEAD, "frames": [FRAME]}, [["", "By", {}], ["m", "", {}]]), "series tables[0]: [0][0]: String should have at least 1 character"),
        (_lines({**HEAD, "frames": [FRAME]}, [["m", "By", {"a": 1}], ["m", "", {}]]), "series tables[0]: [0][2].a: Input should be a valid string"),
        (_lines({**HEAD, "frames": [FRAME]}, [["m", "u" * 33, {}], ["m", "", {}]]), "series tables[0]: [0][1]: String should have at most 32 characters"),
        (_lines({**HEAD, "frames": [{**FRAME, "values": ["x", 2.0]}]}, TABLE), "frames[0].values[0]: Input should be a valid number"),
        (_lines({**HEAD, "frames": [{**FRAME, "extra": 1}]}, TABLE), "frames[0].extra: Extra inputs are not permitted"),
        (_lines({**HEAD, "frames": [{**FRAME, "time": -1}]}, TABLE), "frames[0].time: Input should be greater than or equal to 0"),
        (_lines({**HEAD, "frames": [FRAME]}, *([TABLE] * 65)), "series tables: 65 in one batch (at most 64)"),
        (_lines({**HEAD, "frames": [FRAME]}, TABLE)[:-2], "series tables[0]: Invalid JSON: EOF"),
    ],
)  # fmt: skip
def test_a_batch_whose_frames_do_not_add_up_is_refused_naming_the_part(data: bytes, said: str) -> None:
    series = DPUSeries("default")
    with pytest.raises((ValidationError, BatchError)) as caught:
        batch, lines = parse_batch(data)
        read_tables(series, batch, lines)
    assert isinstance(caught.value, (ValidationError, BatchError))
    assert said in _first_error(caught.value)
    assert series.latest == {}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    with telemetry_plane(tmp_path_factory.mktemp("aggregator")) as built:
        yield built


def _batch(serial: str, seq: int, taken_ns: int) -> bytes:
    sample = {**GOOD_SAMPLE, "time": taken_ns}
    return json.dumps({"serial": serial, "seq": seq, "class": "load", "samples": [sample]}).encode()


async def _publish(url: str, user: str, password: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url, user=user, password=password, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        for subject, data in messages:
            await nc.publish(subject, data)
        await nc.flush(timeout=2)
    finally:
        await nc.close()


def test_a_dpu_asking_for_telemetry_may_publish_before_it_reports_and_not_once_it_is_deleted(plane: Plane) -> None:
    serial = "AGG0001"
    bus = plane.telemetry.embedded
    assert bus is not None
    plane.dpu(serial, "load")  # no agent has reported: the DPU object alone authorizes it
    wait_until(lambda: bus.authorized.get(serial) == "default", timeout=10, what="the DPU authorized on the bus")
    bus.wait_applied()
    access = plane.telemetry.credentials.access(plane.telemetry.agent_url, "default", serial)
    subject = f"{access.subjectPrefix}.load"
    asyncio.run(_publish(access.url, access.user, access.password, [(subject, _batch(serial, 1, time.time_ns()))]))
    wait_until(lambda: serial in plane.telemetry.series, timeout=10, what="the batch at the aggregator")

    with plane.api.client() as http:
        resp = http.delete(f"{BASE}/default/dpus/dpu-{serial.lower()}")
    assert resp.status_code in (200, 202), resp.text
    wait_until(lambda: serial not in bus.authorized, timeout=10, what="the deleted DPU's authorization revoked")
    bus.wait_applied()
    # refused: the client sees the -ERR, or the connection reset, or its flush unanswered, as the race falls
    with pytest.raises(Exception, match=r"(?i)authorization|connection lost|timeout"):
        asyncio.run(_publish(access.url, access.user, access.password, [(subject, _batch(serial, 2, time.time_ns()))]))
    time.sleep(0.3)
    assert plane.telemetry.series[serial].last_seq == 1  # nothing of it reached the aggregator
    assert f'authentication error - User "{access.user}"' in (bus.directory / "nats.log").read_text()


def test_the_aggregator_counts_what_it_took_refused_and_how_late_it_arrived(plane: Plane) -> None:
    serial = "AGG0002"
    plane.dpu(serial, "load")
    bus = plane.telemetry.embedded
    assert bus is not None
    wait_until(lambda: serial in bus.authorized, timeout=10, what="the DPU authorized on the bus")
    bus.wait_applied()
    access = plane.telemetry.credentials.access(plane.telemetry.agent_url, "default", serial)
    subject = f"{access.subjectPrefix}.load"
    with plane.api.client() as http:
        before = http.get("/telemetry/v1/aggregator").json()
    late = time.time_ns() - 3_000_000_000  # taken 3 s ago: buffered on the DPU, say
    messages = [
        (subject, _batch(serial, 10, late)),
        (subject, _batch(serial, 10, late)),  # the same seq again: a repeat of a cut forward
        (subject, b'{"serial": "AGG0002", "seq": 11}'),  # not a batch
        (subject, _batch("SOMEONE-ELSE", 12, late)),  # names another DPU than its subject
    ]
    asyncio.run(_publish(access.url, access.user, access.password, messages))

    def refused(figures: dict[str, Any], reason: str) -> int:
        return int(figures["refused"].get(reason, 0))

    with plane.api.client() as http:
        wait_until(
            lambda: refused(http.get("/telemetry/v1/aggregator").json(), "foreign") > refused(before, "foreign"),
            timeout=10,
            what="the aggregator's figures",
        )
        after = http.get("/telemetry/v1/aggregator").json()
        metrics = http.get("/metrics").text
    assert after["batches"] == before["batches"] + 1
    assert after["samples"] == before["samples"] + 1
    for reason in ("repeat", "invalid", "foreign"):
        assert refused(after, reason) == refused(before, reason) + 1, reason
    assert after["authorizedDPUs"] >= 1 and after["connected"] is True
    assert after["durable"] is True  # the embedded bus keeps the events and usage classes in JetStream
    lag = after["lagSeconds"]
    grew = [i for i, (a, b) in enumerate(zip(lag["counts"], before["lagSeconds"]["counts"], strict=True)) if a != b]
    assert len(grew) == 1
    assert lag["buckets"][grew[0]] == 5  # 3 s late: in the (2.5, 5] bucket
    assert after["lagSeconds"]["sum"] - before["lagSeconds"]["sum"] == pytest.approx(3, abs=1)
    assert 'dpufleet_telemetry_batches_refused_total{reason="repeat"}' in metrics
    assert 'dpufleet_telemetry_ingest_lag_seconds_bucket{le="5.0"}' in metrics
    assert "dpufleet_telemetry_bus_authorized_dpus" in metrics


def test_the_aggregator_endpoint_needs_the_metrics_permission(plane: Plane) -> None:
    with plane.api.client() as http:
        resp = http.post("/auth/v1/tokens", json={"name": "tenant-agg", "grants": ["viewer@other"]})
    assert resp.status_code == 201, resp.text
    with httpx.Client(base_url=plane.api.url, headers={"Authorization": f"Bearer {resp.json()['token']}"}) as tenant:
        assert tenant.get("/telemetry/v1/aggregator").status_code == 403


def test_the_controllers_events_join_the_event_stream_for_the_dpus_they_are_about(plane: Plane) -> None:
    from dpufleet.runtime.events import EventRecorder
    from support.telemetry import Stream

    serial = "AGG0005"
    name = f"dpu-{serial.lower()}"
    with plane.api.client() as http:
        doc = {"kind": "DPU", "metadata": {"name": name, "labels": {"rack": "r7"},
                                           "annotations": {"telemetry.dpufleet.io/classes": "events"}},
               "spec": {"serialNumber": serial}}  # fmt: skip
        assert http.post(f"{BASE}/default/dpus", json=doc).status_code == 201
    store = plane.telemetry.store
    dpu = store.get("DPU", name, "default")
    with plane.api.client() as http:
        every = Stream(http, "/telemetry/v1/projects/default/watch", {"class": "events"})
        warnings = Stream(http, "/telemetry/v1/projects/default/watch",
                          {"class": "events", "minSeverity": "warning", "dpuSelector": "rack=r7"})  # fmt: skip
        loads = Stream(http, "/telemetry/v1/projects/default/watch", {"class": "load"})
        before = plane.telemetry.stats.controller_events
        health = EventRecorder(store, "health")
        health.record(dpu, "Remediating", "the BMC stopped answering: power-cycling the DPU", "Warning")
        health.record(dpu, "Remediating", "the BMC stopped answering: power-cycling the DPU", "Warning")  # a repeat
        health.record(dpu, "Recovered", "the DPU answers again")
        EventRecorder(store, "rollout").record(
            {"kind": "DPUSet", "metadata": {"name": "set-a", "project": "default", "uid": "u1"}}, "RolloutStarted"
        )
        wait_until(lambda: len(every.samples()) >= 4, timeout=10, what="the events on the watch")
        time.sleep(0.3)
    mine = [s for s in every.samples() if s.get("dpu") == name]
    assert [(s["attributes"]["reason"], s["attributes"]["count"], s["severity"]) for s in mine] == [
        ("Remediating", "1", "warning"), ("Remediating", "2", "warning"), ("Recovered", "1", "info")
    ]  # fmt: skip
    assert mine[0]["name"] == "dpufleet.event.controller" and mine[0]["class"] == "events"
    assert mine[0]["body"] == "the BMC stopped answering: power-cycling the DPU"
    assert mine[0]["attributes"]["source"] == "health" and mine[0]["attributes"]["object.kind"] == "DPU"
    other = [s for s in every.samples() if "dpu" not in s]
    assert [(s["attributes"]["object.kind"], s["attributes"]["reason"]) for s in other] == [
        ("DPUSet", "RolloutStarted")
    ]
    # a watch of one DPU's warnings sees that DPU's warnings only; a watch of another class sees none
    assert [s["attributes"]["reason"] for s in warnings.samples()] == ["Remediating", "Remediating"]
    assert loads.samples() == []
    assert plane.telemetry.stats.controller_events - before == 4


def test_watch_prints_the_object_a_controller_event_is_about_when_it_is_no_dpu() -> None:
    from dpufleet.cli.telemetry import _line

    item = {"class": "events", "name": "dpufleet.event.controller", "time": 0, "severity": "info",
            "body": "rollout started", "attributes": {"object.kind": "DPUSet", "object.name": "set-a"}}  # fmt: skip
    assert _line(item).split(" ")[1] == "dpuset/set-a"
    assert _line({**item, "dpu": "dpu-s1"}).split(" ")[1] == "dpu-s1"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("nonsense", "'nonsense' is not HOST:PORT"),
        ("127.0.0.1:http", "the port 'http' is not a number"),
        ("127.0.0.1:99999", "the port must be 0-65535"),
    ],
)
def test_a_bad_metrics_listen_is_refused_naming_the_option(tmp_path: Any, value: str, said: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "dpufleet.main", "agent", "--root", str(tmp_path), "--metrics-listen", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: --metrics-listen {value!r}") and said in proc.stderr
