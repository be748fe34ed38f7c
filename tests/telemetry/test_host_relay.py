"""Given a control plane with its fleet bus, the real agent on an emulated DPU and its host's relay (a real
aiohttp server on loopback, the host agent's): a DPU cut off from the bus keeps its telemetry on the host,
sealed, until the host's cap for it is reached, and the rest on the DPU under the spool's policy. Back on the
bus it forwards both in the order produced. A batch the host altered is counted lost, sample for sample, and
an agent restarted meanwhile still knows what its host keeps."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.net import wait_until
from tests.support.telemetry import Plane, assign, report, telemetry_plane

from dpufleet.agent.daemon import Agent, AgentConfig
from dpufleet.agent.host_relay import RelayClient, RelayUnavailable
from dpufleet.agent.host_relay_server import HostRelay
from dpufleet.api.telemetry import Accounting, TelemetryClass
from dpufleet.sim.fleet import build_fleet


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    with telemetry_plane(tmp_path_factory.mktemp("relay-telemetry")) as built:
        yield built


@pytest.fixture(scope="module")
def dpu(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    sim = build_fleet(1, 1, ["nvidia-bluefield-3"], 23, tmp_path_factory.mktemp("sim"))
    assert sim.dpus[0].osroot is not None
    return sim.dpus[0].serial, sim.dpus[0].osroot


def _agent(plane: Plane, serial: str, root: Path, relay: HostRelay, link: dict[str, bool]) -> Agent:
    agent = plane.agent(serial, root, buffer_bytes=24 * 1024)
    agent.config.host_relay = f"http://127.0.0.1:{relay.port}"
    agent.uplink_up = lambda: link["up"]  # type: ignore[method-assign]
    return agent


def _balanced(acc: Accounting) -> None:
    for cls, produced in acc.produced.items():
        lost = sum(by_class.get(cls, 0) for by_class in acc.dropped.values())
        assert produced == acc.delivered.get(cls, 0) + lost + acc.buffered.get(cls, 0), (cls, acc)


def test_a_dpu_cut_off_keeps_its_telemetry_sealed_on_its_host_and_forwards_it_in_order(
    plane: Plane, dpu: tuple[str, Path], tmp_path: Path
) -> None:
    serial, root = dpu
    plane.dpu(serial, "load,usage,events")
    link = {"up": True}
    final: list[Accounting] = []
    sent_seqs: list[int] = []

    async def scenario() -> None:
        relay = HostRelay(tmp_path / "host", ["127.0.0.1"], store_bytes=48 * 1024)
        relay.dpus = frozenset({serial})
        await relay.start("127.0.0.1", 0)
        agent = _agent(plane, serial, root, relay, link)
        try:
            assign(agent, await report(agent, serial), serial)
            telemetry = agent.telemetry
            assert telemetry is not None and telemetry.relay is not None
            telemetry.collect_once()
            assert await telemetry.forward() > 0
            link["up"] = False  # cut off for sixteen collections; the host link stays
            iface = next(p for p in sorted((root / "sys/class/net").iterdir()) if p.name != "lo")
            for index in range(16):
                if index in (3, 12):  # a link flap: two events while cut off
                    (iface / "operstate").write_text("down\n" if index == 3 else "up\n")
                telemetry.collect_once()
                assert await telemetry.forward() == 0
            acc = telemetry.accounting()
            on_host = sorted((tmp_path / "host/relay/store" / serial).iterdir())
            assert on_host and acc.bufferedOnHostBytes == sum(p.stat().st_size for p in on_host)
            assert acc.bufferedOnHostBytes <= 48 * 1024
            # the host keeps ciphertext only: no metric name, no serial in what it holds
            assert all(b"system." not in p.read_bytes() and serial.encode() not in p.read_bytes() for p in on_host)
            # once the host's cap is reached, the newer batches stay on the DPU under the spool's policy
            assert telemetry.spool.oldest(1) and telemetry.spool.size <= 24 * 1024
            assert acc.buffered[TelemetryClass.EVENTS] == 2  # events survive
            _balanced(acc)

            # the host alters one batch it keeps: that batch, and only it, is counted lost
            victim = on_host[0]
            blob = bytearray(victim.read_bytes())
            blob[-1] ^= 0x01
            victim.write_bytes(bytes(blob))
            victim_cls, victim_samples = victim.name.split(".")[1], int(victim.name.split(".")[2])

            # the agent restarts while cut off: what the host keeps is still its own, and still counted
            await agent.aclose()
            agent = _agent(plane, serial, root, relay, link)
            assign(agent, await report(agent, serial), serial)
            telemetry = agent.telemetry
            assert telemetry is not None
            restarted = telemetry.accounting()  # a run counts what it finds buffered as produced in it
            assert restarted.bufferedOnHost == acc.bufferedOnHost and restarted.buffered == acc.buffered
            before = sum(v.get(victim_cls, 0) for v in restarted.dropped.values())

            link["up"] = True
            seqs = sorted([*telemetry.on_host, *(e.seq for e in telemetry.spool.oldest(10_000))])
            while telemetry.on_host or telemetry.spool.oldest(1):
                await telemetry.forward()
            done = telemetry.accounting()
            assert done.dropped["lost-on-host"] == {victim_cls: victim_samples}
            assert sum(v.get(victim_cls, 0) for v in done.dropped.values()) == before + victim_samples
            assert done.buffered == {} and done.bufferedOnHost == {}
            _balanced(done)
            assert list((tmp_path / "host/relay/store" / serial).iterdir()) == []  # the host's copies removed
            sent_seqs.extend(seqs)
            final.extend([acc, done])
        finally:
            await agent.aclose()
            await relay.stop()

    asyncio.run(scenario())
    aggregator = plane.telemetry
    first, last = final
    wait_until(lambda: (s := aggregator.series.get(serial)) is not None and s.accounting == last
               and s.last_seq >= max(sent_seqs), 10, what="the forward")  # fmt: skip
    series = aggregator.series[serial]
    # in order: the aggregator drops a batch whose seq is not above the last of its class, so anything out of
    # order would show as received < delivered (by the two runs of the agent: before its restart, and after)
    delivered = {c: first.delivered.get(c, 0) + last.delivered.get(c, 0) for c in {*first.delivered, *last.delivered}}
    assert dict(series.received) == delivered


def test_the_host_relay_refuses_a_dpu_it_does_not_carry_and_a_bad_name(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay = HostRelay(tmp_path, ["127.0.0.1"], store_bytes=1024)
        relay.dpus = frozenset({"MT0001"})
        await relay.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{relay.port}"
        stranger = RelayClient(base, "MT9999")
        mine = RelayClient(base, "MT0001")
        try:
            with pytest.raises(RelayUnavailable, match=r"HTTP 403 .*carries no DPU MT9999"):
                await stranger.put("1.load.3", b"x")  # not "gone": the host may not list it yet
            assert await RelayClient(base, "mt0001").names() == []  # a serial's case is not its identity
            resp = await mine._call("PUT", mine._store("..%2Fescape"), b"x")
            assert resp.status_code in (400, 404)  # a name that is no batch's, never a path
            resp = await mine._call("PUT", mine._store("1.load"), b"x")
            assert resp.status_code == 400 and resp.json()["message"].startswith("name:")
            assert await mine.put("1.load.3", b"a" * 1000)
            assert not await mine.put("2.load.3", b"b" * 100)  # over this DPU's cap: refused, nothing kept
            assert await mine.names() == ["1.load.3"]
            assert await mine.get("2.load.3") is None
        finally:
            await stranger.aclose()
            await mine.aclose()
            await relay.stop()
        assert not (tmp_path / "relay/store/MT9999").exists()

    asyncio.run(scenario())


def test_a_host_agent_serves_the_relay_for_exactly_the_dpus_its_host_carries(tmp_path: Path) -> None:
    sim = build_fleet(2, 2, ["nvidia-bluefield-3"], 5, tmp_path / "sim")
    host = sim.hosts[0]
    assert host.osroot is not None

    async def scenario() -> None:
        config = AgentConfig("https://cp.example.net:8741", None, host.osroot, "host", state_dir=tmp_path / "state",
                             relay_listen=("127.0.0.1", 0))  # fmt: skip
        agent = Agent(config)
        try:
            await agent._start_relay(await agent.collect())
            assert agent.relay is not None and agent.relay.port
            # the DPU agent names itself by its DMI serial; its host sees the same card by its VPD
            assert agent.relay.dpus == {d.serial for d in host.dpus}
            assert agent.relay.origins == {"cp.example.net"}  # the control plane's host, by default
            async with httpx.AsyncClient() as http:
                resp = await http.get(f"http://127.0.0.1:{agent.relay.port}/relay/v1/store/{host.dpus[0].serial}")
                assert resp.status_code == 200 and resp.json()["items"] == []
                other = sim.hosts[1].dpus[0].serial
                resp = await http.get(f"http://127.0.0.1:{agent.relay.port}/relay/v1/store/{other}")
                assert resp.status_code == 403
        finally:
            await agent.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--role", "dpu", "--relay-listen", "127.0.0.1:0"], "error: --relay-listen: only a host's agent"),
        (["--role", "host", "--relay-listen", "nowhere"], "error: --relay-listen 'nowhere' is not HOST:PORT"),
        (["--role", "host", "--relay-origin", "cp"], "error: --relay-origin goes with --relay-listen"),
        (["--host-relay", "ftp://host"], "error: --host-relay 'ftp://host': expected http://HOST:PORT"),
        (["--role", "host", "--host-relay", "http://h:1"], "error: --host-relay: a DPU's agent uses"),
    ],
)
def test_bad_relay_options_are_refused_naming_the_option(tmp_path: Path, args: list[str], said: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dpufleet.main", "agent", "--root", str(tmp_path), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(said), proc.stderr


def test_an_agent_started_without_its_relay_counts_what_the_host_kept_as_lost_and_numbers_above_it(
    tmp_path: Path,
) -> None:
    from dpufleet.agent.telemetry.collector import Telemetry
    from dpufleet.api.telemetry import BusAccess, TelemetryAssignment

    (tmp_path / "root/proc").mkdir(parents=True)
    (tmp_path / "root/proc/loadavg").write_text("0.10 0.20 0.30 1/100 1\n")
    bus = BusAccess(url="nats://127.0.0.1:9", user="u", password="p", subjectPrefix="dpufleet.tm.default.MT1")
    assignment = TelemetryAssignment(classes=[TelemetryClass.LOAD], bus=bus)

    async def scenario() -> None:
        relay = HostRelay(tmp_path / "host", ["127.0.0.1"])
        relay.dpus = frozenset({"MT1"})
        await relay.start("127.0.0.1", 0)
        client = RelayClient(f"http://127.0.0.1:{relay.port}", "MT1")
        try:
            first = Telemetry(tmp_path / "root", "MT1", tmp_path / "spool", host_relay=client, uplink=lambda: False)
            first.assign(assignment)
            produced = sum(first.collect_once() for _ in range(3))
            assert await first.forward() == 0 and first.spool.oldest(1) == []  # all of it on the host
            kept = dict(first.accounting().bufferedOnHost)
            assert sum(kept.values()) == produced
            top = max(first.on_host)
        finally:
            await client.aclose()
            await relay.stop()
        # started again without --host-relay (and a clock gone back): the host's batches are counted lost
        again = Telemetry(tmp_path / "root", "MT1", tmp_path / "spool", clock_ns=lambda: 0)
        acc = again.accounting()
        assert acc.dropped == {"host-unreachable": kept} and acc.produced == kept and acc.buffered == {}
        again.assign(assignment)
        again.collect_once()
        assert again.spool.oldest(1)[0].seq > top  # never a seq the aggregator may hold already

    asyncio.run(scenario())
