"""Instance interface policy on real Open vSwitch, proven with packets. Two emulated DPUs, each with its
own OVS (userspace datapath) in its own namespaces; their `p1` cables meet on one L2 segment (the
underlay), and their agents program what the control plane wants:

- a Geneve tunnel, then a VXLAN one, between the two DPUs carries traffic between their hosts' PFs: a
  capture on the underlay sees it encapsulated with the interface's VNI;
- a QoS rate on the wire port holds under a burst sent at full speed (bits, then packets, per second:
  within 20% of the limit); a meter deleted by hand is set again, with an Event;
- a conntrack allow-list on a host VF: the host's allowed connection gets its replies, the wire's
  unsolicited connection and datagram are dropped.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dpufleet.sim.network import DataPlane, in_netns
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover
from support.net import netns_ping, wait_until
from support.server import RunningServer, threaded_server

pytestmark = pytest.mark.timeout(180)
BOUND = 15.0  # seconds for the agents (converging every 0.2 s) to program a change

SNIFF = """
import json, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
seen = {}
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    if len(frame) < 50 or frame[12:14] != b"\\x08\\x00" or frame[23] != 17:
        continue
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    dport = struct.unpack("!H", frame[udp + 2 : udp + 4])[0]
    vni = int.from_bytes(frame[udp + 12 : udp + 15], "big")  # Geneve and VXLAN: bytes 4-6 of their header
    key = f"{dport}/{vni}"
    seen[key] = seen.get(key, 0) + 1
print(json.dumps(seen))
"""

BLAST = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + float(sys.argv[3])
payload = b"x" * int(sys.argv[4])
while time.time() < end:
    try:
        s.sendto(payload, (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass
"""

SERVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
s.settimeout(float(sys.argv[3]))
try:
    while True:
        c, _ = s.accept()
        c.sendall(c.recv(100).upper())
        c.close()
except socket.timeout:
    pass
"""

CONNECT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    c.sendall(b"hello")
    print(c.recv(100).decode() or "EMPTY")
except OSError as exc:
    print("FAILED", type(exc).__name__)
"""

UDP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
try:
    print(s.recv(100).decode())
except socket.timeout:
    print("NOTHING")
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def py(namespace: str, code: str, *args: str, timeout: float = 30) -> str:
    return in_netns(namespace, "python3", "-c", code, *args, timeout=timeout).strip()


def py_background(namespace: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, "python3", "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ping(namespace: str, to: str, count: int = 3) -> int:
    return netns_ping(namespace, to, count)


def counter(namespace: str, device: str, name: str) -> int:
    return int(in_netns(namespace, "cat", f"/sys/class/net/{device}/statistics/{name}"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with threaded_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = SimOptions(
        hosts=2,
        dpus_per_host=1,
        seed=181,
        directory=tmp_path_factory.mktemp("fleet"),
        time_scale=0.005,
        server=api.url,
        token=api.token,
        register=False,
        agents=True,
        heartbeat_seconds=1.0,
        network=True,
        network_dpus=2,
        network_interval=0.2,
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def planes(fleet: SimRunning) -> Iterator[dict[str, DataPlane]]:
    """DPU name -> its data plane; the two DPUs' p1 cables joined on one segment (the underlay)."""
    by_name = {
        f"dpu-{d.serial.lower()}": fleet.data_planes[d.id] for d in fleet.fleet.dpus if d.id in fleet.data_planes
    }
    a, b = (by_name[n] for n in sorted(by_name))
    sh("ip", "link", "add", "fab", "netns", a.wire_ns, "type", "veth", "peer", "name", "fab", "netns", b.wire_ns)
    for plane in (a, b):
        ns = plane.wire_ns
        sh("ip", "-n", ns, "link", "add", "seg", "type", "bridge")
        for port in ("w-p1", "fab"):
            sh("ip", "-n", ns, "link", "set", port, "master", "seg")
        for port in ("fab", "seg"):
            sh("ip", "-n", ns, "link", "set", port, "up")
    sh("ip", "-n", a.host_ns, "addr", "add", "198.51.100.10/28", "dev", "pf0")
    sh("ip", "-n", b.host_ns, "addr", "add", "198.51.100.11/28", "dev", "pf0")
    sh("ip", "-n", a.wire_ns, "addr", "add", "198.51.100.33/28", "dev", "w-p0")
    sh("ip", "-n", a.host_ns, "addr", "add", "198.51.100.34/28", "dev", "pf0vf0")
    sh("ip", "-n", a.wire_ns, "addr", "add", "198.51.100.49/28", "dev", "w-p0")
    sh("ip", "-n", a.host_ns, "addr", "add", "198.51.100.50/28", "dev", "pf0vf1")
    yield by_name


def interface(name: str, type_: str, port: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "DPUServiceInterface", "metadata": {"name": name}, "spec": {"type": type_, "port": port, **spec}}


def chain(name: str, hops: list[str], side: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"hops": [{"interface": h} for h in hops]}
    if side is not None:
        spec["dpuSelector"] = {"matchLabels": {"side": side}}
    return {"kind": "DPUServiceChain", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def site(api: RunningServer, fleet: SimRunning, planes: dict[str, DataPlane]) -> Iterator[Operator]:
    with api.client() as http:
        op = Operator(http, "default")
        names = discover(op, fleet)
        a, b = sorted(planes)
        assert set(names) == {a, b}
        for name, side in ((a, "a"), (b, "b")):
            op.patch("dpus", name, {"metadata": {"labels": {"side": side}}})
        op.create(
            "dpuserviceipams",
            {
                "kind": "DPUServiceIPAM",
                "metadata": {"name": "underlay"},
                "spec": {"ipv4": {"cidr": "203.0.113.0/24", "blockPrefixLength": 28}},
            },
        )
        for doc in [
            interface("wire0", "Physical", "p0"),
            interface("uplink", "Physical", "p1", ipam="underlay"),
            interface("host-pf0", "PFRepresentor", "pf0hpf", pf=0),
            interface("host-vf0", "VFRepresentor", "pf0vf0", pf=0, vf=0),
            interface("host-vf1", "VFRepresentor", "pf0vf1", pf=0, vf=1),
        ]:
            op.create("dpuserviceinterfaces", doc)
        for there, side in ((b, "a"), (a, "b")):
            for proto, port, vni in (("Geneve", "gnv0", 5001), ("VXLAN", "vxl0", 6001)):
                doc = interface(
                    f"{proto.lower()}-{side}",
                    "Tunnel",
                    port,
                    tunnel={"protocol": proto, "vni": vni, "underlay": "uplink", "remoteDPU": there},
                )
                doc["spec"]["dpuSelector"] = {"matchLabels": {"side": side}}
                op.create("dpuserviceinterfaces", doc)
        yield op


def programmed(op: Operator, name: str, dpus: int) -> bool:
    doc = op.get("dpuservicechains", name) or {}
    entries = (doc.get("status") or {}).get("dpus") or []
    return sum(1 for e in entries if e.get("programmed")) == dpus


def test_hosts_on_two_dpus_talk_through_a_geneve_then_a_vxlan_tunnel(
    site: Operator, planes: dict[str, DataPlane]
) -> None:
    a, b = (planes[n] for n in sorted(planes))
    site.create("dpuservicechains", chain("overlay-a", ["host-pf0", "geneve-a"], side="a"))
    site.create("dpuservicechains", chain("overlay-b", ["host-pf0", "geneve-b"], side="b"))
    try:
        wait_until(lambda: programmed(site, "overlay-a", 1) and programmed(site, "overlay-b", 1), BOUND, what="chains")
    except AssertionError:
        print(json.dumps([site.get("dpuservicechains", n) for n in ("overlay-a", "overlay-b")], indent=1))
        raise
    wait_until(lambda: ping(a.host_ns, "198.51.100.11", 1) == 1, BOUND, what="host A to reach host B")

    sniffer = py_background(a.wire_ns, SNIFF, "w-p1", "3")
    time.sleep(0.5)
    assert ping(a.host_ns, "198.51.100.11", 10) == 10
    out, err = sniffer.communicate(timeout=30)
    seen = json.loads(out or "{}")
    assert seen.get("6081/5001", 0) >= 20, (
        f"ten requests and ten replies, Geneve with VNI 5001 on the underlay: {seen} {err}"
    )
    assert not any(k.startswith("4789/") for k in seen), seen

    site.patch(
        "dpuservicechains", "overlay-a", {"spec": {"hops": [{"interface": "host-pf0"}, {"interface": "vxlan-a"}]}}
    )
    site.patch(
        "dpuservicechains", "overlay-b", {"spec": {"hops": [{"interface": "host-pf0"}, {"interface": "vxlan-b"}]}}
    )

    def over_vxlan() -> bool:
        sniff = py_background(a.wire_ns, SNIFF, "w-p1", "1.2")
        time.sleep(0.3)
        ping(a.host_ns, "198.51.100.11", 3)
        seen = json.loads(sniff.communicate(timeout=30)[0] or "{}")
        return seen.get("4789/6001", 0) >= 6 and not any(k.startswith("6081/") for k in seen)

    wait_until(over_vxlan, BOUND, interval=0.5, what="the hosts' traffic to move to the VXLAN tunnel")
    assert ping(b.host_ns, "198.51.100.10", 5) == 5, "and from B's side too"
    for name in ("overlay-a", "overlay-b"):
        site.http.delete(site.path("dpuservicechains", name))
    wait_until(lambda: ping(a.host_ns, "198.51.100.11", 1) == 0, BOUND, what="the overlay to stop")


def measured_rate(plane: DataPlane, seconds: float, size: int) -> tuple[float, float]:
    """(bits, packets) per second that reached the host's VF from a full-speed UDP burst on the wire."""
    bytes0 = counter(plane.host_ns, "pf0vf0", "rx_bytes")
    packets0 = counter(plane.host_ns, "pf0vf0", "rx_packets")
    py(plane.wire_ns, BLAST, "198.51.100.34", "9", str(seconds), str(size))
    time.sleep(0.3)
    got_bytes = counter(plane.host_ns, "pf0vf0", "rx_bytes") - bytes0
    got_packets = counter(plane.host_ns, "pf0vf0", "rx_packets") - packets0
    return got_bytes * 8 / seconds, got_packets / seconds


def test_a_qos_rate_holds_under_a_full_speed_burst_and_a_deleted_meter_comes_back(
    site: Operator, planes: dict[str, DataPlane]
) -> None:
    a = planes[sorted(planes)[0]]
    site.create("dpuservicechains", chain("metered", ["wire0", "host-vf0"], side="a"))
    wait_until(lambda: ping(a.wire_ns, "198.51.100.34", 1) == 1, BOUND, what="the metered chain")
    unlimited, _ = measured_rate(a, 1.0, 1000)

    site.patch("dpuserviceinterfaces", "wire0", {"spec": {"qos": {"maxRateBps": 20_000_000, "burstBits": 200_000}}})

    def limited() -> bool:
        return measured_rate(a, 0.5, 1000)[0] < 0.5 * unlimited

    wait_until(limited, BOUND, interval=0.5, what="the bit rate limit to take effect")
    bits, _ = measured_rate(a, 2.0, 1000)
    assert unlimited > 2 * 20_000_000, f"the burst must exceed the limit to test it ({unlimited:.0f} b/s)"
    assert 0.8 * 20_000_000 <= bits <= 1.2 * 20_000_000, f"{bits:.0f} b/s against a limit of 20 Mb/s"

    site.patch(
        "dpuserviceinterfaces",
        "wire0",
        {"spec": {"qos": {"maxRatePps": 2000, "burstPackets": 50, "maxRateBps": None, "burstBits": None}}},
    )
    wait_until(lambda: measured_rate(a, 0.5, 100)[1] < 4000, BOUND, interval=0.5, what="the packet rate limit")
    _, packets = measured_rate(a, 2.0, 100)
    assert 0.8 * 2000 <= packets <= 1.2 * 2000, f"{packets:.0f} packets/s against a limit of 2,000"

    meters = sh("ovs-ofctl", "-O", "OpenFlow14", "dump-meters", a.agent_config().openflow)
    meter = meters.split("meter=")[1].split()[0]
    sh("ovs-ofctl", "-O", "OpenFlow14", "del-meter", a.agent_config().openflow, f"meter={meter}")  # by hand
    wait_until(
        lambda: any("QoS meter" in e["message"] for e in site.events("DPUServiceInterface", "wire0")),
        BOUND,
        what="a DriftRepaired event for the meter",
    )
    wait_until(lambda: ping(a.wire_ns, "198.51.100.34", 1) == 1, BOUND, what="the chain's flows back with it")
    _, packets = measured_rate(a, 2.0, 100)
    assert 0.8 * 2000 <= packets <= 1.2 * 2000, f"{packets:.0f} packets/s after the repair"

    site.http.delete(site.path("dpuservicechains", "metered"))
    site.patch("dpuserviceinterfaces", "wire0", {"spec": {"qos": None}})
    wait_until(
        lambda: "meter=" not in sh("ovs-ofctl", "-O", "OpenFlow14", "dump-meters", a.agent_config().openflow),
        BOUND,
        what="the meter removed with the policy",
    )


def test_conntrack_passes_replies_of_allowed_connections_and_drops_the_unsolicited(
    site: Operator, planes: dict[str, DataPlane]
) -> None:
    a = planes[sorted(planes)[0]]
    site.patch(
        "dpuserviceinterfaces",
        "host-vf1",
        {"spec": {"conntrack": {"allowOutbound": [{"protocol": "tcp", "port": 8080}, {"protocol": "icmp"}]}}},
    )
    site.create("dpuservicechains", chain("guarded", ["wire0", "host-vf1"], side="a"))
    wait_until(lambda: ping(a.host_ns, "198.51.100.49", 1) == 1, BOUND, what="the host's allowed ping to pass")
    assert ping(a.wire_ns, "198.51.100.50", 3) == 0, "the wire may not open anything towards the host, ping included"

    server = py_background(a.wire_ns, SERVE, "198.51.100.49", "8080", "4")
    listener = py_background(a.host_ns, SERVE, "198.51.100.50", "9090", "4")
    udp = py_background(a.host_ns, UDP_LISTEN, "198.51.100.50", "9091", "3")
    time.sleep(0.5)
    try:
        assert py(a.host_ns, CONNECT, "198.51.100.49", "8080") == "HELLO", "an allowed connection gets its replies"
        assert py(a.wire_ns, CONNECT, "198.51.100.50", "9090").startswith("FAILED"), "unsolicited: dropped"
        assert py(a.host_ns, CONNECT, "198.51.100.49", "8081").startswith("FAILED"), "not on the allow-list"
        py(a.wire_ns, BLAST, "198.51.100.50", "9091", "0.3", "20")
        assert udp.communicate(timeout=30)[0].strip() == "NOTHING", "an unsolicited datagram is dropped"
    finally:
        for proc in (server, listener, udp):
            proc.kill()
            proc.wait(timeout=10)
    doc = site.get("dpuservicechains", "guarded") or {}
    (entry,) = [e for e in doc["status"]["dpus"] if e["programmed"]]
    assert entry.get("lastError") is None
