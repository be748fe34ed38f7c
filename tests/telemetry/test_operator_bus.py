"""Given an operator's own nats-server (JetStream on, its users from the authorization.conf the control plane
writes) when the control plane is away while a DPU publishes, then the events and usage batches are kept by
the bus and taken in once the control plane is back, and only the DPUs the control plane knows may publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from dpufleet.api.telemetry import CLASSES_ANNOTATION, TelemetryClass, encode_batch
from dpufleet.server.telemetry import TelemetryPlane
from dpufleet.server.telemetry_bus import BusCredentials
from support.net import free_port, wait_until
from support.server import RunningServer, threaded_server

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None, reason="needs nats-server")
BASE = "/apis/dpufleet.io/v1alpha1/projects/default"
SERIAL = "OPBUS0001"


def _plane(api: RunningServer) -> TelemetryPlane:
    assert api.server is not None and api.server.state.telemetry is not None
    return api.server.state.telemetry


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """An operator's nats-server that is not running yet: its URL, its configuration, and the data dir of the
    control plane whose authorization.conf it includes."""
    data = tmp_path / "data"
    port = free_port()
    conf = tmp_path / "operator-nats.conf"
    auth = data / "telemetry" / "bus" / "authorization.conf"
    conf.write_text(
        f'port: {port}\nhost: 127.0.0.1\njetstream: {{store_dir: "{tmp_path / "js"}"}}\n'
        f'pid_file: "{tmp_path / "nats.pid"}"\ninclude "{os.path.relpath(auth, conf.parent)}"\n'
    )
    yield f"nats://127.0.0.1:{port}", conf, data
    pid_file = tmp_path / "nats.pid"  # a bus the test left running (it failed half way) is stopped by its PID
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def _dpu_asking(api: RunningServer, classes: str, auth: Path) -> None:
    """The DPU object, asking for these classes; once the server has written its user to ``auth``."""
    doc = {"kind": "DPU", "metadata": {"name": f"dpu-{SERIAL.lower()}", "annotations": {CLASSES_ANNOTATION: classes}},
           "spec": {"serialNumber": SERIAL}}  # fmt: skip
    with api.client() as http:
        assert http.post(f"{BASE}/dpus", json=doc).status_code == 201
    wait_until(lambda: f"dpu-{SERIAL}" in auth.read_text(), timeout=10, what="the DPU's user in the file")


async def _publish(url: str, user: str, password: str, messages: list[tuple[str, bytes]]) -> list[str]:
    """Publish as one DPU; what the bus said against it (a permissions violation comes asynchronously)."""
    errors: list[str] = []

    async def said(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, user=user, password=password, allow_reconnect=False, max_reconnect_attempts=0,
                            error_cb=said)  # fmt: skip
    try:
        for subject, data in messages:
            await nc.publish(subject, data)
        await nc.flush(timeout=2)
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    return errors


def _batch(seq: int, cls: TelemetryClass) -> bytes:
    now = time.time_ns()
    sample = (
        {"name": "dpufleet.event", "time": now, "body": f"event {seq}", "severity": "warning"}
        if cls is TelemetryClass.EVENTS
        else {"name": "dpufleet.usage.network.io", "unit": "By", "value": float(seq), "time": now}
    )
    return encode_batch(SERIAL, seq, cls, [sample])


def test_an_operators_bus_keeps_the_events_and_usage_published_while_the_control_plane_is_away(
    bus: tuple[str, Path, Path],
) -> None:
    url, conf, data = bus
    auth = data / "telemetry" / "bus" / "authorization.conf"
    with threaded_server(data, controllers=False, telemetry_bus=url) as api:
        plane = _plane(api)
        # the server writes the users the bus should know, and waits for the bus
        wait_until(auth.exists, timeout=10, what="authorization.conf written")
        assert oct(auth.stat().st_mode & 0o777) == "0o600"
        _dpu_asking(api, "events,usage,load", auth)
        users = json.loads(auth.read_text().removeprefix("authorization: "))["users"]
        assert [u["user"] for u in users] == ["dpufleet-aggregator", f"dpu-{SERIAL}"]

        proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: plane.stats.durable, timeout=20, what="the aggregator on the operator's bus, durable")
            access = BusCredentials.load_or_create(data / "telemetry").access(url, "default", SERIAL)
            prefix = access.subjectPrefix
            asyncio.run(
                _publish(url, access.user, access.password, [(f"{prefix}.events", _batch(1, TelemetryClass.EVENTS))])
            )
            wait_until(lambda: SERIAL in plane.series and plane.series[SERIAL].received["events"] == 1,
                       timeout=10, what="the first event taken in")  # fmt: skip
            # a DPU may not publish as another
            said = asyncio.run(
                _publish(url, access.user, access.password, [("dpufleet.tm.default.OTHER.events", b"{}")])
            )
            assert any("permissions violation" in error for error in said), said
        except BaseException:
            proc.kill()
            raise

    # the control plane is away; the DPU goes on publishing
    assert asyncio.run(
        _publish(url, access.user, access.password, [
            (f"{prefix}.events", _batch(2, TelemetryClass.EVENTS)),
            (f"{prefix}.events", _batch(3, TelemetryClass.EVENTS)),
            (f"{prefix}.usage", _batch(4, TelemetryClass.USAGE)),
            (f"{prefix}.load", _batch(5, TelemetryClass.LOAD)),
        ])
    ) == []  # fmt: skip
    try:
        with threaded_server(data, controllers=False, telemetry_bus=url) as api:
            plane = _plane(api)
            wait_until(lambda: SERIAL in plane.series and plane.series[SERIAL].received["usage"] == 1,
                       timeout=20, what="what the bus kept, taken in")  # fmt: skip
            time.sleep(0.5)
            series = plane.series[SERIAL]
            # the event taken in before was acknowledged: not delivered again; the load batch was not kept
            assert dict(series.received) == {"events": 2, "usage": 1}
            with api.client() as http:
                figures = http.get("/telemetry/v1/aggregator").json()
            assert figures["durable"] is True and figures["durableBatches"] == 3
            assert figures["embeddedBus"] is False and figures["authorizedDPUs"] == 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_on_a_bus_without_jetstream_every_class_is_taken_in_as_it_comes(
    bus: tuple[str, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    url, conf, data = bus
    conf.write_text("\n".join(line for line in conf.read_text().splitlines() if not line.startswith("jetstream")))
    auth = data / "telemetry" / "bus" / "authorization.conf"
    with threaded_server(data, controllers=False, telemetry_bus=url) as api:
        plane = _plane(api)
        _dpu_asking(api, "events", auth)
        proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(plane.connected.is_set, timeout=20, what="the aggregator on the operator's bus")
            assert plane.stats.durable is False
            assert "no JetStream (it is not enabled on this bus)" in caplog.text
            access = BusCredentials.load_or_create(data / "telemetry").access(url, "default", SERIAL)
            sent = [(f"{access.subjectPrefix}.events", _batch(1, TelemetryClass.EVENTS))]
            assert asyncio.run(_publish(url, access.user, access.password, sent)) == []
            wait_until(lambda: SERIAL in plane.series and plane.series[SERIAL].received["events"] == 1,
                       timeout=10, what="the event taken in as it came")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)
