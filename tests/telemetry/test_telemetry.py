"""Given a control plane running its fleet bus (a real nats-server, its child) and the real agent on emulated
DPUs enrolled over mTLS: each DPU collects only the classes its DPU object asks for, publishes them under its
own subjects only, a watcher sees them live (its own project only), and a DPU cut off from the bus buffers,
trims by class and forwards in order, every sample accounted for."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from tests.support.net import free_port, wait_until
from tests.support.telemetry import Plane, Stream, assign, report, telemetry_plane

from dpufleet.api.telemetry import (
    CLASSES_ANNOTATION,
    LOG_SEVERITY_ANNOTATION,
    Accounting,
    TelemetryAssignment,
    TelemetryClass,
)
from dpufleet.sim import osroot
from dpufleet.sim.faults import FaultInjector
from dpufleet.sim.fleet import build_fleet

BASE = "/apis/dpufleet.io/v1alpha1/projects"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    with telemetry_plane(tmp_path_factory.mktemp("telemetry")) as built:
        yield built


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    sim = build_fleet(1, 5, ["nvidia-bluefield-3"], 11, tmp_path_factory.mktemp("sim"))
    out = []
    for dpu in sim.dpus:
        assert dpu.osroot is not None
        out.append((dpu.serial, dpu.osroot))
    return out


def test_a_dpu_collects_only_the_classes_asked_for_and_a_watcher_sees_them_live(
    plane: Plane, roots: list[tuple[str, Path]]
) -> None:
    serial, root = roots[0]
    plane.dpu(serial, "load,usage")
    with plane.api.client() as http:
        stream = Stream(http, "/telemetry/v1/projects/default/watch", {"metric": "system.cpu.time,system.network.io"})
        assert stream.status in (None, 200), stream.body

        async def scenario() -> None:
            agent = plane.agent(serial, root)
            try:
                reply = await report(agent, serial)
                assert reply["telemetry"]["classes"] == ["load", "usage"]  # type: ignore[index]
                assign(agent, reply, serial)
                telemetry = agent.telemetry
                assert telemetry is not None
                assert telemetry.collect_once() > 0
                assert await telemetry.forward() > 0
                # sender-side: what was not asked for was neither collected nor sent
                assert set(telemetry.produced) == {TelemetryClass.LOAD, TelemetryClass.USAGE}
                # the control plane turns usage off and environmental on: the next collection follows
                with plane.api.client() as admin:
                    resp = admin.patch(
                        f"{BASE}/default/dpus/dpu-{serial.lower()}",
                        json={"metadata": {"annotations": {CLASSES_ANNOTATION: "load,environmental"}}},
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                    assert resp.status_code == 200, resp.text
                assign(agent, await agent.send(None, serial, None), serial)
                usage_before = telemetry.produced[TelemetryClass.USAGE]
                telemetry.collect_once()
                await telemetry.forward()
                assert telemetry.produced[TelemetryClass.USAGE] == usage_before
                assert telemetry.produced[TelemetryClass.ENVIRONMENTAL] == 1  # the emulated OS's one thermal zone
            finally:
                await agent.aclose()

        asyncio.run(scenario())
        wait_until(lambda: any(s["name"] == "system.network.io" for s in stream.samples()), 10, what="usage")
        wait_until(lambda: sum(s["name"] == "system.cpu.time" for s in stream.samples()) >= 2 * 16 * 8, 10, what="load")
    samples = stream.samples()
    assert {s["name"] for s in samples} == {"system.cpu.time", "system.network.io"}  # the watcher's filter
    assert all(s["dpu"] == f"dpu-{serial.lower()}" for s in samples)
    cpu = next(s for s in samples if s["name"] == "system.cpu.time")
    assert (
        cpu["unit"] == "s" and cpu["class"] == "load" and set(cpu["attributes"]) == {"cpu.logical_number", "cpu.mode"}
    )
    # the environmental sample reached the fleet endpoint with its OpenTelemetry name and unit
    with plane.api.client() as http:
        text = http.get("/telemetry/v1/federate").text
    assert f'hw_temperature_celsius{{project="default",dpu="dpu-{serial.lower()}"' in text


def test_a_dpu_cannot_publish_as_another_and_a_tenant_cannot_watch_another_project(
    plane: Plane, roots: list[tuple[str, Path]]
) -> None:
    serial, root = roots[1]
    other = roots[0][0]
    plane.dpu(serial, "events")
    errors: list[str] = []

    async def scenario() -> None:
        agent = plane.agent(serial, root)
        try:
            reply = await report(agent, serial)
            bus = TelemetryAssignment.model_validate(reply["telemetry"]).bus
            assert bus is not None and bus.subjectPrefix == f"dpufleet.tm.default.{serial}"

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc))

            nc = await nats.connect(bus.url, user=bus.user, password=bus.password, error_cb=on_error,
                                    allow_reconnect=False)  # fmt: skip
            forged = {"serial": other, "seq": 10**18, "class": "events",
                      "samples": [{"name": "forged", "time": 1}]}  # fmt: skip
            await nc.publish(f"dpufleet.tm.default.{other}.events", json.dumps(forged).encode())
            await nc.publish("dpufleet.tm.other.x.events", b"{}")
            await nc.flush(timeout=2)
            await asyncio.sleep(0.2)
            await nc.close()
            with pytest.raises(Exception, match=r"(?i)authorization"):  # another DPU's password is not derivable
                await nats.connect(bus.url, user=f"dpu-{other}", password=bus.password, allow_reconnect=False,
                                   max_reconnect_attempts=0, error_cb=on_error)  # fmt: skip
        finally:
            await agent.aclose()

    asyncio.run(scenario())
    assert sum("permissions violation" in e.lower() for e in errors) >= 2, errors
    series = plane.telemetry.series.get(other)
    assert series is None or series.last_seq < 10**18  # the forged batch never reached the aggregator

    # a member of project "other" may not watch project "default"
    with plane.api.client() as http:
        resp = http.post("/auth/v1/tokens", json={"name": "tenant", "grants": ["viewer@other"]})
    assert resp.status_code == 201, resp.text
    token = resp.json()["token"]
    with httpx.Client(base_url=plane.api.url, headers={"Authorization": f"Bearer {token}"}) as tenant:
        denied = tenant.get("/telemetry/v1/projects/default/watch")
        assert denied.status_code == 403, denied.text
        assert tenant.get("/telemetry/v1/projects/default/accounting").status_code == 403


def test_a_dpu_cut_off_buffers_trims_by_class_and_forwards_in_order_with_every_sample_counted(
    plane: Plane, roots: list[tuple[str, Path]]
) -> None:
    serial, root = roots[2]
    plane.dpu(serial, "load,usage,events")
    link = {"up": True}

    async def scenario() -> None:
        agent = plane.agent(serial, root, buffer_bytes=24 * 1024)
        agent.uplink_up = lambda: link["up"]  # type: ignore[method-assign]
        try:
            assign(agent, await report(agent, serial), serial)
            telemetry = agent.telemetry
            assert telemetry is not None
            telemetry.collect_once()
            assert await telemetry.forward() > 0
            link["up"] = False  # the uplink is cut for twelve collections
            iface = next(p for p in sorted((root / "sys/class/net").iterdir()) if p.name != "lo")
            for index in range(12):
                if index in (3, 7):  # a link flap on the DPU: two events while cut off
                    state = iface / "operstate"
                    state.write_text("down\n" if index == 3 else "up\n")
                telemetry.collect_once()
                assert await telemetry.forward() == 0
            buffered = telemetry.spool.buffered()
            assert telemetry.spool.size <= 24 * 1024
            trimmed = telemetry.accounting().dropped
            # old metrics are thinned first (here usage: load's batches are too big for many to fit), never events
            assert sum(trimmed["downsampled"].values()) > 0 and "events" not in trimmed["downsampled"]
            dropped = trimmed["buffer-full"]
            assert dropped.get("load", 0) > 0  # then the lowest-priority class goes first
            assert "events" not in dropped and buffered[TelemetryClass.EVENTS] == 2  # events survive overflow
            seqs = [e.seq for e in telemetry.spool.oldest(1000)]
            link["up"] = True
            while telemetry.spool.oldest(1):
                await telemetry.forward()
            acc = telemetry.accounting()
            for cls, produced in acc.produced.items():
                lost = sum(by_class.get(cls, 0) for by_class in acc.dropped.values())
                assert produced == acc.delivered.get(cls, 0) + lost, (cls, acc)
            assert acc.buffered == {}
            return_seqs.extend(seqs)
            final.append(acc)
        finally:
            await agent.aclose()

    return_seqs: list[int] = []
    final: list[Accounting] = []
    asyncio.run(scenario())
    aggregator = plane.telemetry
    # the agent's last accounting follows its last batch on the bus: once the aggregator holds it, it holds
    # every batch before it (an earlier accounting, from before the cut, would also show nothing buffered)
    wait_until(lambda: (s := aggregator.series.get(serial)) is not None and s.accounting == final[0]
               and s.last_seq >= max(return_seqs), 10, what="the forward")  # fmt: skip
    series = aggregator.series[serial]
    assert series.accounting is not None
    # what the aggregator received is exactly what the agent counts as delivered, class by class
    assert dict(series.received) == series.accounting.delivered
    assert return_seqs == sorted(return_seqs)
    with plane.api.client() as http:
        items = http.get("/telemetry/v1/projects/default/accounting").json()["items"]
    mine = next(i for i in items if i["dpu"] == f"dpu-{serial.lower()}")
    assert mine["agent"]["dropped"]["buffer-full"]["load"] == series.accounting.dropped["buffer-full"]["load"]


def _cli(plane: Plane, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DPUFLEET_SERVER": plane.api.url, "DPUFLEET_TOKEN": plane.api.token,
           "DPUFLEET_CONFIG": str(plane.tmp / "no-config")}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "dpufleet.main", "telemetry", *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_telemetry_watch_streams_what_its_filters_let_through_and_refuses_a_bad_class(
    plane: Plane, roots: list[tuple[str, Path]]
) -> None:
    serial, root = roots[3]
    plane.dpu(serial, "load,usage")
    bad = _cli(plane, "watch", "--class", "loads")
    _, err = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "'--class'" in err and "loads" in err and "Traceback" not in err
    proc = _cli(plane, "watch", "--class", "load", "--metric", "system.memory.usage", "--limit", "4", "-o", "json")
    try:
        wait_until(lambda: any(w.metrics == {"system.memory.usage"} for w in plane.telemetry.watchers), 30,
                   what="the CLI's watch")  # fmt: skip

        async def scenario() -> None:
            agent = plane.agent(serial, root)
            try:
                assign(agent, await report(agent, serial), serial)
                assert agent.telemetry is not None
                agent.telemetry.collect_once()
                await agent.telemetry.forward()
            finally:
                await agent.aclose()

        asyncio.run(scenario())
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    assert {line["attributes"]["system.memory.state"] for line in lines} == {"used", "free", "buffers", "cached"}
    assert all(line["unit"] == "By" and line["dpu"] == f"dpu-{serial.lower()}" for line in lines)


def test_a_real_prometheus_scrapes_the_fleet_endpoint_and_answers_for_a_dpu(
    plane: Plane, roots: list[tuple[str, Path]], tmp_path: Path
) -> None:
    serial, _ = roots[0]
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (./run installs the Debian package prometheus)")
    port = free_port()
    target = plane.api.url.removeprefix("http://")
    # one DPU's own endpoint too (dpufleet agent --metrics-listen), scraped directly
    from dpufleet.agent.telemetry.collector import Telemetry
    from dpufleet.agent.telemetry.exposition import serve

    agent_tm = Telemetry(roots[1][1], roots[1][0], tmp_path / "agent-spool")
    agent_tm.assign(TelemetryAssignment(classes=[TelemetryClass.LOAD]))
    agent_tm.collect_once()
    agent_server, _ = serve(agent_tm, "127.0.0.1", 0)
    agent_port = agent_server.server_port
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: dpufleet-telemetry\n"
        "    metrics_path: /telemetry/v1/federate\n"
        "    honor_labels: true\n"
        f"    authorization: {{credentials: {plane.api.token}}}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
        "  - job_name: dpufleet-agent\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{agent_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    dpu = f"dpu-{serial.lower()}"
    query = f'system_memory_usage_bytes{{dpu="{dpu}",system_memory_state="free"}}'
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom:

            def answered() -> list[dict[str, Any]]:
                try:
                    return list(prom.get("/api/v1/query", params={"query": query}).json()["data"]["result"])
                except (httpx.HTTPError, ValueError, KeyError):
                    return []

            wait_until(lambda: bool(answered()), 40, interval=0.5, what="Prometheus to have scraped the fleet endpoint")
            result = answered()
            counted = prom.get(
                "/api/v1/query", params={"query": f'dpufleet_telemetry_samples_produced_total{{dpu="{dpu}"}}'}
            )
            produced = {r["metric"]["class"] for r in counted.json()["data"]["result"]}
            own = 'system_memory_usage_bytes{job="dpufleet-agent",system_memory_state="free"}'
            wait_until(lambda: bool(prom.get("/api/v1/query", params={"query": own}).json()["data"]["result"]), 40,
                       interval=0.5, what="Prometheus to have scraped the agent's endpoint")  # fmt: skip
            from_agent = prom.get("/api/v1/query", params={"query": own}).json()["data"]["result"]
    finally:
        proc.terminate()
        proc.wait(10)
        agent_server.shutdown()
        agent_server.server_close()
    agent_free = next(v for (name, attrs), (v, _, _) in agent_tm.latest.items()
                      if name == "system.memory.usage" and ("system.memory.state", "free") in attrs)  # fmt: skip
    assert float(from_agent[0]["value"][1]) == agent_free
    assert result[0]["metric"]["project"] == "default"
    series = plane.telemetry.series[serial]
    free = next(v for (name, attrs), (v, _, _) in series.latest.items()
                if name == "system.memory.usage" and ("system.memory.state", "free") in attrs)  # fmt: skip
    assert float(result[0]["value"][1]) == free
    assert "load" in produced


def test_the_agent_loop_starts_telemetry_from_its_report_reply(plane: Plane, roots: list[tuple[str, Path]]) -> None:
    serial, root = roots[4]
    plane.dpu(serial, "load")

    scraped: list[str] = []

    async def scenario() -> None:
        agent = plane.agent(serial, root)
        agent.config.metrics_listen = ("127.0.0.1", 0)  # its own Prometheus endpoint, on a free port
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while loop.time() < deadline:
                series = plane.telemetry.series.get(serial)
                if series is not None and series.received.get("load"):
                    break
                await asyncio.sleep(0.05)
            assert agent.telemetry is not None and agent.telemetry.enabled == {TelemetryClass.LOAD}
            assert agent.metrics_port is not None
            async with httpx.AsyncClient() as http:
                scraped.append((await http.get(f"http://127.0.0.1:{agent.metrics_port}/metrics")).text)
        finally:
            stop.set()
            await asyncio.wait_for(running, 20)
            await agent.aclose()
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.TransportError):  # the endpoint stops with the agent: refused or reset
                await http.get(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=2)

    asyncio.run(scenario())
    body = scraped[0]
    assert 'system_memory_usage_bytes{system_memory_state="free"}' in body
    assert 'dpufleet_telemetry_samples_produced_total{class="load"}' in body
    assert "system_network_io_bytes" not in body, "usage was not asked for: not collected, not served"
    series = plane.telemetry.series[serial]
    assert set(series.received) == {"load"}
    assert (plane.tmp / serial / "state" / "telemetry").is_dir()  # the spool lives in the agent's state dir


def test_a_faults_kernel_line_and_a_service_error_reach_a_watcher_as_logs_and_quiet_lines_stay_on_the_dpu(
    plane: Plane, tmp_path: Path
) -> None:
    sim = build_fleet(1, 1, ["nvidia-bluefield-3"], 12, tmp_path / "sim")
    dpu = sim.dpus[0]
    assert dpu.osroot is not None
    osroot.boot_kernel(dpu)  # the emulated boot writes its kernel and systemd lines before the agent starts
    plane.dpu(dpu.serial, "logs", **{LOG_SEVERITY_ANNOTATION: "warning,flow-logger=info"})
    service_logs = tmp_path / "services" / "logs"
    service_logs.mkdir(parents=True)
    with plane.api.client() as http:
        stream = Stream(http, "/telemetry/v1/projects/default/watch", {"class": "logs"})

        async def scenario() -> None:
            agent = plane.agent(dpu.serial, dpu.osroot)  # type: ignore[arg-type]
            try:
                reply = await report(agent, dpu.serial)
                assert reply["telemetry"]["logSeverity"] == {"*": "warning", "flow-logger": "info"}  # type: ignore[index]
                assign(agent, reply, dpu.serial, service_logs)
                telemetry = agent.telemetry
                assert telemetry is not None
                assert telemetry.collect_once() == 0  # the boot's lines were there before: not replayed
                osroot.syslog(dpu, "sshd[901]", "Accepted publickey for root from 198.51.100.7")  # info: stays
                FaultInjector(sim).inject(dpu.id, "disk-full")
                (service_logs / "flow-logger.log").write_text("flow table ready\n")
                assert telemetry.collect_once() == 2
                assert await telemetry.forward() == 2
            finally:
                await agent.aclose()

        asyncio.run(scenario())
        wait_until(lambda: len(stream.samples()) >= 2, 10, what="the two log lines")
    by_name = {s["name"]: s for s in stream.samples()}
    kernel = by_name["dpufleet.log.syslog"]
    assert kernel["severity"] == "error" and "No space left on device" in kernel["body"]
    assert kernel["attributes"]["syslog.app_name"] == "systemd-journald"
    assert kernel["attributes"]["host.name"] == dpu.hostname
    service = by_name["dpufleet.log.service"]
    assert service["body"] == "flow table ready" and service["attributes"]["service.name"] == "flow-logger"
    assert len(stream.samples()) == 2  # the info line of syslog was below its floor: never produced or sent


def test_a_bad_telemetry_annotation_is_refused_with_the_annotation_named(plane: Plane) -> None:
    with plane.api.client() as http:
        resp = http.post(
            f"{BASE}/default/dpus",
            json={"kind": "DPU", "metadata": {"name": "dpu-badannotation",
                  "annotations": {LOG_SEVERITY_ANNOTATION: "syslog=loud"}}},
        )  # fmt: skip
        assert resp.status_code == 422, resp.text
        assert "telemetry.dpufleet.io/log-severity" in resp.text and "'loud' is not one of" in resp.text
        assert http.get(f"{BASE}/default/dpus/dpu-badannotation").status_code == 404


def test_a_dpuservice_narrows_the_classes_its_instances_are_reported_under(plane: Plane) -> None:
    doc = {
        "kind": "DPUService",
        "metadata": {"name": "billing-only", "annotations": {CLASSES_ANNOTATION: "usage"}},
        "spec": {"artifact": {"image": {"reference": f"repo/svc@sha256:{'b' * 64}"}}, "placement": {"replicas": 1}},
    }
    with plane.api.client() as http:
        assert http.post(f"{BASE}/default/dpuservices", json=doc).status_code == 201
        bad = {**doc, "metadata": {"name": "bad", "annotations": {CLASSES_ANNOTATION: "usage,cost"}}}
        refused = http.post(f"{BASE}/default/dpuservices", json=bad)
    assert refused.status_code == 422 and "unknown telemetry class 'cost'" in refused.text
    serial = "MT9999X00001"
    plane.dpu(serial, "load,usage")
    answer = plane.telemetry.assignment("dpu", serial, "default")
    assert answer is not None and answer["serviceClasses"] == {"billing-only": ["usage"]}
