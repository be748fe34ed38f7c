"""The agent's network reconciler: the DPU's Open vSwitch made to match what the control plane wants.

Every `interval` seconds it asks the control plane for this DPU's desired network (`GET
/agent/v1/network`), then:

- **interfaces** become OVS ports (OVSDB through ovsdbapp), marked `external_ids:dpufleet-interface`,
  with their VLAN tag and MTU; a port of ours no longer wanted is removed, one deleted by hand is
  added back (a repair);
- **chains** become OpenFlow rules under the chain's own cookie, written with `ovs-ofctl --bundle`
  as one atomic transaction that deletes that cookie's flows and adds the chain's: another chain's
  flows are never touched, and a packet of the chain meets either the old rules or the new ones.
  A chain is reprogrammed when what it renders to changes (a hop, a match, an ofport) or when the
  switch holds a different number of its flows than it should (someone ran `ovs-ofctl del-flows`):
  the latter is a repair;
- it reports per chain whether it is programmed, its flow count and its last error, and the repairs
  it made, which the control plane turns into Events (`POST /agent/v1/network/status`).

It keeps nothing on disk: after a restart it reprograms every chain from the desired network (an
atomic replace, so traffic of a chain that was already right does not stop). While the control plane
is unreachable it keeps converging to the last desired network it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..api.agent_network import ChainReport, DesiredChain, DesiredInterface, DesiredNetwork, NetworkReport, Repair
from ..api.kinds import ChainMatch, ConntrackRule
from .telemetry.base import ChainCounters, Dataplane, PortCounters

log = logging.getLogger(__name__)
NETWORK_PATH = "/agent/v1/network"
OWNER_KEY = "dpufleet-interface"
COOKIE_TAG = 0xDF  # the top byte of every chain cookie (api/kinds/network.chain_cookie)
UNDERLAY_COOKIE = (0xDE << 56) | 1  # the underlay bridge's one flow (NORMAL)
NEIGHBOUR_COOKIE = (0xDF << 56) | 0xFFFFFFFF00  # the ARP flows of every chain (no chain cookie ends in 00)
_METER = re.compile(r"meter=(\d+)\s+(.*?)\s*bands=\s*(.*?)(?=\s*meter=|\Z)", re.DOTALL)
_COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")
_FLOW_STATS = re.compile(r"cookie=(0x[0-9a-f]+).*?n_packets=(\d+), n_bytes=(\d+)")
REPORT_EVERY = 30.0  # an unchanged report is sent again this often


class OVSError(RuntimeError):
    pass


@dataclass
class NetworkConfig:
    """Where the DPU's switch is: its OVSDB, its bridge, and the run dir holding `<bridge>.mgmt`."""

    ovsdb: str
    bridge: str
    rundir: Path
    netns: str | None = None  # the namespace of the DPU's ports and OVS (the emulator's); None: this one
    interval: float = 1.0
    underlay_bridge: str = "br-underlay"  # where a tunnel's underlay port and the DPU's endpoint address go

    @property
    def openflow(self) -> str:
        return self.openflow_of(self.bridge)

    def openflow_of(self, bridge: str) -> str:
        return f"unix:{self.rundir}/{bridge}.mgmt"


# --- rendering (pure) ------------------------------------------------------------------------------------------


def _match_fields(match: ChainMatch, forward: bool) -> list[str]:
    fields: list[str] = []
    if match.vlan is not None:
        fields.append(f"dl_vlan={match.vlan}")
    v6 = match.prefix is not None and ":" in match.prefix
    if match.protocol is not None:
        fields.append(match.protocol + ("6" if v6 else ""))
    elif match.prefix is not None:
        fields.append("ipv6" if v6 else "ip")
    if match.prefix is not None:
        fields.append(f"{'ipv6' if v6 else 'nw'}_{'dst' if forward else 'src'}={match.prefix}")
    if match.port is not None:
        fields.append(f"tp_{'dst' if forward else 'src'}={match.port}")
    return fields


def service_mac(dpu: str, interface: str) -> str:
    """A Service interface's MAC inside its instance when none is given: stable per DPU and interface,
    locally administered, unicast."""
    digest = hashlib.sha256(f"{dpu}/{interface}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def ct_zone(interface: str) -> int:
    """The conntrack zone of an interface's connections: stable, one per interface, never 0."""
    return 1 + zlib.crc32(interface.encode()) % 65534


def meter_ids(interfaces: list[DesiredInterface]) -> dict[str, tuple[int | None, int | None]]:
    """Interface -> its (bits, packets) meter ids: stable per name (a hash, probed past collisions)."""
    taken: set[int] = set()
    ids: dict[str, tuple[int | None, int | None]] = {}
    for iface in sorted((i for i in interfaces if i.qos is not None), key=lambda i: i.name):
        base = 1 + 2 * (zlib.crc32(iface.name.encode()) % 131_000)
        while base in taken:
            base = 1 + (base + 1) % 262_000
        taken.add(base)
        assert iface.qos is not None
        ids[iface.name] = (
            base if iface.qos.maxRateBps is not None else None,
            base + 1 if iface.qos.maxRatePps is not None else None,
        )
    return ids


def render_meters(interfaces: list[DesiredInterface]) -> dict[int, str]:
    """Meter id -> its ovs-ofctl description (`kbps|pktps burst band=...`), for every QoS interface."""
    ids = meter_ids(interfaces)
    meters: dict[int, str] = {}
    for iface in interfaces:
        if iface.qos is None:
            continue
        bits, packets = ids[iface.name]
        q = iface.qos
        if bits is not None and q.maxRateBps is not None:
            kbps = max(1, round(q.maxRateBps / 1000))
            burst = max(12, round((q.burstBits or q.maxRateBps // 10) / 1000))  # >= one 1500-byte frame
            meters[bits] = f"kbps burst band=type=drop,rate={kbps},burst_size={burst}"
        if packets is not None and q.maxRatePps is not None:
            burst = q.burstPackets or max(1, q.maxRatePps // 10)
            meters[packets] = f"pktps burst band=type=drop,rate={q.maxRatePps},burst_size={burst}"
    return meters


@dataclass(frozen=True)
class _Leg:
    src: str  # interface names
    dst: str
    forward: bool


class _Renderer:
    """One chain's flows, with the QoS meters of the interfaces traffic enters by and the conntrack
    allow-lists of the interfaces it passes."""

    def __init__(
        self, chain: DesiredChain, ofports: dict[str, int], interfaces: dict[str, DesiredInterface] | None
    ) -> None:
        self.spec = chain.spec
        self.ofports = ofports
        self.interfaces = interfaces or {}
        self.meters = meter_ids(list(self.interfaces.values()))
        self.neighbours: list[tuple[int, int, int]] = []  # (in port, out port, priority) ARP must pass
        match = self.spec.match
        self.priority = 100 + 10 * sum(x is not None for x in (match.vlan, match.prefix, match.protocol, match.port))

    def flows(self) -> list[str]:
        flows: list[str] = []
        for here, there in zip(self.spec.hops, self.spec.hops[1:], strict=False):
            legs = [_Leg(here.exit, there.entry, True)]
            if self.spec.bidirectional:
                legs.append(_Leg(there.entry, here.exit, False))
            for leg in legs:
                flows += self._leg(leg)
        return flows

    def _metered(self, src: str, priority: int, fields: list[str], actions: str) -> list[str]:
        """A flow forwarding what entered at `src`: through its meters first, if it has any (two meters
        take two tables: OpenFlow allows one meter per flow)."""
        bits, packets = self.meters.get(src, (None, None))
        meters = [m for m in (bits, packets) if m is not None]
        head = ",".join([f"priority={priority}", *fields])
        if not meters:
            return [f"{head},actions={actions}"]
        if len(meters) == 1:
            return [f"{head},actions=meter:{meters[0]},{actions}"]
        return [
            f"{head},actions=meter:{meters[0]},goto_table:1",
            f"table=1,{head},actions=meter:{meters[1]},{actions}",
        ]

    def _leg(self, leg: _Leg) -> list[str]:
        match = self.spec.match
        src, dst = self.ofports[leg.src], self.ofports[leg.dst]
        out = f"output:{dst}"
        p = self.priority
        base = [f"in_port={src}", *_match_fields(match, leg.forward)]
        ip_level = match.prefix is not None or match.protocol is not None
        v6_prefix = match.prefix is not None and ":" in match.prefix
        if ip_level and not v6_prefix:
            self.neighbours.append((src, dst, p - 1))  # ARP of the chain's legs: one shared flow per port
        policy = self._conntrack(leg)
        if policy is None:
            return self._metered(leg.src, p, base, out)
        zone, rules, remote_is_dst = policy
        families = ["ipv6"] if v6_prefix else ["ip"] if match.prefix is not None else ["ip", "ipv6"]
        flows = [] if ip_level else self._metered(leg.src, p, base, out)  # what is not IP passes (ARP)
        for family in families:
            l3 = self._l3(family, match.protocol, base)
            flows.append(f"priority={p + 4},{','.join([*l3, 'ct_state=-trk'])},actions=ct(zone={zone},table=0)")
            for state in ("+trk+est", "+trk+rel"):
                flows += self._metered(leg.src, p + 3, [*l3, f"ct_state={state}"], out)
            for rule in rules:
                fields = self._rule(family, l3, rule, remote_is_dst)
                if fields is not None:
                    flows += self._metered(
                        leg.src, p + 2, [*fields, "ct_state=+trk+new"], f"ct(commit,zone={zone}),{out}"
                    )
            flows.append(f"priority={p + 1},{','.join([*l3, 'ct_state=+trk'])},actions=drop")
        return flows

    def _conntrack(self, leg: _Leg) -> tuple[int, list[ConntrackRule], bool] | None:
        """The allow-list governing a leg: the sender's outbound rules, else the receiver's inbound ones
        (zone, rules, whether the rules' far end is the packet's destination)."""
        sender, receiver = self.interfaces.get(leg.src), self.interfaces.get(leg.dst)
        if sender is not None and sender.conntrack is not None:
            return ct_zone(sender.name), sender.conntrack.allowOutbound, True
        if receiver is not None and receiver.conntrack is not None:
            return ct_zone(receiver.name), receiver.conntrack.allowInbound, False
        return None

    @staticmethod
    def _l3(family: str, protocol: str | None, base: list[str]) -> list[str]:
        """`base` with its protocol token made the family's (ip/ipv6, tcp/tcp6, ...), added if absent."""
        six = family == "ipv6"
        token = (protocol + ("6" if six else "")) if protocol else family
        kept = [f for f in base if f not in {"ip", "ipv6", "tcp", "tcp6", "udp", "udp6", "icmp", "icmp6"}]
        return [*kept[:1], token, *kept[1:]]

    def _rule(self, family: str, l3: list[str], rule: ConntrackRule, remote_is_dst: bool) -> list[str] | None:
        """The chain leg's fields narrowed to one allow rule, or None when the two cannot both hold."""
        match = self.spec.match
        if match.protocol is not None and match.protocol != rule.protocol:
            return None
        six = family == "ipv6"
        if rule.prefix is not None and (":" in rule.prefix) != six:
            return None
        fields = [f for f in l3 if f not in {"ip", "ipv6"}]
        if match.protocol is None:
            fields.append(rule.protocol + ("6" if six else ""))
        keyed = dict(f.split("=", 1) for f in fields if "=" in f)
        plain = [f for f in fields if "=" not in f]
        extra: dict[str, str] = {}
        if rule.prefix is not None:
            key = f"{'ipv6' if six else 'nw'}_{'dst' if remote_is_dst else 'src'}"
            extra[key] = rule.prefix
        if rule.port is not None:
            extra["tp_dst"] = str(rule.port)  # a new connection's first packet goes to the port connected to
        for key, value in extra.items():
            if key in keyed and keyed[key] != value:
                return None
            keyed[key] = value
        return [*plain, *(f"{k}={v}" for k, v in keyed.items())]


def render_chain(
    chain: DesiredChain, ofports: dict[str, int], interfaces: dict[str, DesiredInterface] | None = None
) -> list[str]:
    """The chain's flows (ovs-ofctl syntax, without the cookie): hop i's exit to hop i+1's entry, and back.

    `ofports`: interface name -> OpenFlow port; `interfaces`: the DPU's interfaces by name, for their
    QoS meters and conntrack allow-lists. A chain that takes only some IP traffic needs ARP to pass
    its legs too: `chain_neighbours` gives those, and `render_neighbours` one flow per port for all."""
    return _Renderer(chain, ofports, interfaces).flows()


def chain_neighbours(chain: DesiredChain, ofports: dict[str, int]) -> list[tuple[int, int, int]]:
    """(in port, out port, priority) of the chain's legs that ARP must pass (its match is IP-level)."""
    renderer = _Renderer(chain, ofports, None)
    renderer.flows()
    return renderer.neighbours


def render_neighbours(legs: list[tuple[int, int, int]]) -> list[str]:
    """One ARP flow per in port, to every chain's next hop from it (chains sharing a port would
    otherwise write the same match twice, and OpenFlow keeps only the last)."""
    by_port: dict[int, tuple[set[int], int]] = {}
    for src, dst, priority in legs:
        outs, best = by_port.get(src, (set(), 0))
        by_port[src] = (outs | {dst}, max(best, priority))
    return [
        f"priority={priority},in_port={src},arp,actions={','.join(f'output:{d}' for d in sorted(outs))}"
        for src, (outs, priority) in sorted(by_port.items())
    ]


def _fingerprint(flows: list[str]) -> str:
    return hashlib.sha256("\n".join(flows).encode()).hexdigest()


# --- the switch -----------------------------------------------------------------------------------------------


class Switch:
    """The DPU's OVS: ports through OVSDB (ovsdbapp), flows through ovs-ofctl. Blocking: run in a thread."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self._api: Any = None

    def api(self) -> Any:
        if self._api is None:
            from ovsdbapp.backend.ovs_idl import connection
            from ovsdbapp.schema.open_vswitch import impl_idl

            try:
                idl = connection.OvsdbIdl.from_server(self.config.ovsdb, "Open_vSwitch")
                # ovsdbapp keeps the first connection made on its class (one OVSDB per process); a class
                # of our own per switch keeps each its own (the emulator runs several DPUs' agents).
                own = type("SwitchIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
                self._api = own(connection.Connection(idl=idl, timeout=10))
            except Exception as exc:
                raise OVSError(f"cannot reach OVSDB at {self.config.ovsdb}: {exc}") from None
        return self._api

    def close(self) -> None:
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.ovsdb_connection.stop()
            self._api = None

    def _do(self, command: Any) -> Any:
        try:
            return command.execute(check_error=True)
        except Exception as exc:
            raise OVSError(f"OVSDB: {exc}") from None

    def bridges(self) -> list[str]:
        return [self.config.bridge, self.config.underlay_bridge]

    def our_ports(self) -> dict[str, tuple[str, str]]:
        """Port name -> (the interface object it renders, its bridge), for the ports this agent made."""
        api = self.api()
        rows = self._do(api.db_find("Interface", columns=["name", "external_ids"]))
        bridge_of: dict[str, str] = {}
        for bridge in self.bridges():
            if self._do(api.br_exists(bridge)):
                bridge_of.update({port: bridge for port in self._do(api.list_ports(bridge))})
        return {
            r["name"]: (r["external_ids"][OWNER_KEY], bridge_of[r["name"]])
            for r in rows
            if OWNER_KEY in r["external_ids"] and r["name"] in bridge_of
        }

    def ensure_underlay(self) -> None:
        """The underlay bridge: its ports switched NORMAL, its own (internal) port the tunnel endpoint."""
        api, bridge = self.api(), self.config.underlay_bridge
        with api.transaction(check_error=True) as txn:
            txn.add(api.add_br(bridge, may_exist=True, datapath_type="netdev"))
            txn.add(api.db_set("Bridge", bridge, ("fail_mode", "secure")))
        openflow = self.config.openflow_of(bridge)
        socket = self.config.rundir / f"{bridge}.mgmt"
        deadline = time.monotonic() + 5.0
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # ovs-vswitchd makes the bridge (and its socket) once it reads the change
        dump = self._ofctl("dump-flows", openflow, "--no-stats")
        if f"cookie={UNDERLAY_COOKIE:#x}" not in dump:
            self._ofctl("add-flow", openflow, f"cookie={UNDERLAY_COOKIE:#x},priority=0,actions=NORMAL")

    def set_address(self, device: str, address: str) -> None:
        """`address` (with its prefix length) the only address of `device`, which is up."""
        shown = json.loads(self._ip("-j", "addr", "show", "dev", device) or "[]")
        have = {f"{a['local']}/{a['prefixlen']}" for d in shown for a in d.get("addr_info", [])}
        if have != {address}:
            self._ip("addr", "flush", "dev", device)
            self._ip("addr", "add", address, "dev", device)
        if not shown or "UP" not in shown[0].get("flags", []):
            self._ip("link", "set", "dev", device, "up")

    def attach_service(self, port: str, inner: str, pid: int, address: str | None, mac: str) -> bool:
        """A veth from the switch's namespace (`port`) into process `pid`'s network namespace (`inner`);
        True when it was made now (the switch must open the new `port` afresh)."""
        inside = ["nsenter", "-t", str(pid), "-n"]
        present = self._run_checked([*inside, "ip", "-j", "link", "show", "dev", inner], quiet=True)
        if present is None:
            if self._link_exists(port):
                self._ip("link", "del", "dev", port)  # the old pair's end
            self._ip("link", "add", port, "type", "veth", "peer", "name", inner, "netns", str(pid))
            # the userspace datapath does not fill in checksums a veth left to offload
            self._run_checked([*inside, "ethtool", "-K", inner, "tx", "off"], quiet=True)
            self._run_checked([*inside, "ip", "link", "set", "dev", inner, "address", mac])
            if address is not None:
                self._run_checked([*inside, "ip", "addr", "add", address, "dev", inner])
            self._run_checked([*inside, "ip", "link", "set", "dev", inner, "up"])
        self._ip("link", "set", "dev", port, "up")
        return present is None

    def _link_exists(self, device: str) -> bool:
        try:
            self._ip("link", "show", "dev", device)
        except OVSError:
            return False
        return True

    def _run_checked(self, argv: list[str], quiet: bool = False) -> str | None:
        """Run; its output, or None when it failed and `quiet` (else OVSError naming the command)."""
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OVSError(f"{argv[0]}: {exc}") from None
        if done.returncode != 0:
            if quiet:
                return None
            raise OVSError(f"{' '.join(argv)}: {done.stderr.strip()[:300]}")
        return done.stdout

    def _ip(self, *args: str) -> str:
        argv = ["ip", *(["-n", self.config.netns] if self.config.netns else []), *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OVSError(f"ip: {exc}") from None
        if done.returncode != 0:
            raise OVSError(f"{' '.join(argv)}: {done.stderr.strip()[:300]}")
        return done.stdout

    def ensure_port(self, iface: DesiredInterface, now_on: str | None = None) -> None:
        api = self.api()
        bridge = self.config.underlay_bridge if iface.underlay else self.config.bridge
        with api.transaction(check_error=True) as txn:
            if now_on is not None and now_on != bridge:
                txn.add(api.del_port(iface.port, now_on, if_exists=True))  # moved between bridges
            txn.add(api.add_port(bridge, iface.port, may_exist=True))
            external = {OWNER_KEY: iface.name}
            if iface.mac is not None:
                external["attached-mac"] = iface.mac
            columns: list[tuple[str, Any]] = [("external_ids", external)]
            if iface.mtu is not None:
                columns.append(("mtu_request", iface.mtu))
            if iface.type == "Patch" and iface.peerBridge:
                columns += [("type", "patch"), ("options", {"peer": f"{iface.port}-peer"})]
            if iface.tunnel is not None:
                t = iface.tunnel
                options = {"remote_ip": t.remote, "local_ip": t.local, "key": str(t.vni)}
                columns += [("type", t.protocol.lower()), ("options", options)]
            txn.add(api.db_set("Interface", iface.port, *columns))
            txn.add(api.db_set("Port", iface.port, ("tag", iface.vlan if iface.vlan is not None else [])))

    def delete_port(self, port: str, bridge: str | None = None) -> None:
        self._do(self.api().del_port(port, bridge or self.config.bridge, if_exists=True))

    def ofports(self) -> dict[str, int]:
        """Interface name -> OpenFlow port, on the chains' bridge (port numbers are per bridge)."""
        api = self.api()
        on_bridge = set(self._do(api.list_ifaces(self.config.bridge)))
        rows = self._do(api.db_find("Interface", columns=["name", "ofport"]))
        found: dict[str, int] = {}
        for r in rows:
            ofport = r["ofport"]
            if isinstance(ofport, list):
                ofport = ofport[0] if ofport else -1
            if isinstance(ofport, int) and ofport > 0 and r["name"] in on_bridge:
                found[r["name"]] = ofport
        return found

    def meters(self) -> dict[int, str]:
        """Meter id -> its description as ovs-ofctl prints it back (normalised like render_meters)."""
        found: dict[int, str] = {}
        for m in _METER.finditer(self._ofctl("dump-meters", self.config.openflow)):
            band = " ".join(m.group(3).split()).replace(" ", ",")
            found[int(m.group(1))] = f"{' '.join(m.group(2).split())} band={band}"
        return found

    def set_meter(self, meter: int, description: str, exists: bool) -> None:
        unit_flags, band = description.split(" band=")
        spec = f"meter={meter},{unit_flags.replace(' ', ',')},band={band}"
        self._ofctl("mod-meter" if exists else "add-meter", self.config.openflow, spec)

    def delete_meter(self, meter: int) -> None:
        self._ofctl("del-meter", self.config.openflow, f"meter={meter}")

    def _ofctl(self, *args: str, stdin: str | None = None) -> str:
        argv = ["ovs-ofctl", "-O", "OpenFlow14", *args]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OVSError(f"ovs-ofctl: {exc}") from None
        if done.returncode != 0:
            raise OVSError(f"ovs-ofctl {args[0]}: {done.stderr.strip()[:500]}")
        return done.stdout

    def flow_counts(self) -> dict[int, int]:
        """Flows per chain cookie now in the switch."""
        counts: dict[int, int] = {}
        for line in self._ofctl("dump-flows", self.config.openflow, "--no-stats").splitlines():
            found = _COOKIE.search(line)
            if found:
                cookie = int(found.group(1), 16)
                if cookie >> 56 == COOKIE_TAG:
                    counts[cookie] = counts.get(cookie, 0) + 1
        return counts

    def flow_statistics(self) -> dict[int, tuple[int, int, int]]:
        """Per chain cookie now in the switch: (flows, packets, bytes) they matched."""
        found: dict[int, tuple[int, int, int]] = {}
        for line in self._ofctl("dump-flows", self.config.openflow).splitlines():
            match = _FLOW_STATS.search(line)
            if match:
                cookie = int(match.group(1), 16)
                if cookie >> 56 == COOKIE_TAG:
                    flows, packets, octets = found.get(cookie, (0, 0, 0))
                    found[cookie] = (flows + 1, packets + int(match.group(2)), octets + int(match.group(3)))
        return found

    def port_statistics(self) -> dict[str, tuple[str, dict[str, int]]]:
        """Port name -> (the interface object it renders, its OVSDB statistics), for the ports this agent made."""
        rows = self._do(self.api().db_find("Interface", columns=["name", "external_ids", "statistics"]))
        return {
            r["name"]: (r["external_ids"][OWNER_KEY], {k: int(v) for k, v in (r["statistics"] or {}).items()})
            for r in rows
            if OWNER_KEY in r["external_ids"]
        }

    def replace_flows(self, cookie: int, flows: list[str]) -> None:
        """One bundle: delete the cookie's flows, add these (atomic; other cookies untouched)."""
        lines = [f"delete cookie={cookie:#x}/-1", *(f"add cookie={cookie:#x},{flow}" for flow in flows)]
        self._ofctl("--bundle", "add-flows", self.config.openflow, "-", stdin="\n".join(lines) + "\n")

    def replace_many(self, chains: list[tuple[int, list[str]]]) -> None:
        """Several cookies' replacements in one bundle (atomic; cookies not named untouched)."""
        lines: list[str] = []
        for cookie, flows in chains:
            lines += [f"delete cookie={cookie:#x}/-1", *(f"add cookie={cookie:#x},{flow}" for flow in flows)]
        self._ofctl("--bundle", "add-flows", self.config.openflow, "-", stdin="\n".join(lines) + "\n")

    def delete_flows(self, cookie: int) -> None:
        self._ofctl("del-flows", self.config.openflow, f"cookie={cookie:#x}/-1")


# --- the reconciler -------------------------------------------------------------------------------------------


@dataclass
class _Applied:
    fingerprint: str
    flows: int


@dataclass
class NetworkReconciler:
    config: NetworkConfig
    server: str
    http: Callable[[], httpx.AsyncClient]
    switch: Switch = field(init=False)
    desired: DesiredNetwork | None = None
    applied: dict[int, _Applied] = field(default_factory=dict)  # cookie -> what was programmed (this run)
    known_ports: set[str] = field(default_factory=set)  # ports this run made or saw (a missing one is drift)
    meters_set: dict[int, str] = field(default_factory=dict)  # meters this run set (a missing one is drift)
    # The service runtime beside it: a Service interface's veth goes into its running instance. None: the
    # veth is someone else's to make (the port is expected to exist, as for a physical port).
    service_pid: Callable[[str], int | None] | None = None
    repairs_made: int = 0
    _last_sent: tuple[Any, float] | None = None

    def __post_init__(self) -> None:
        self.switch = Switch(self.config)

    def dataplane_counters(self) -> Dataplane | None:
        """What the telemetry plugin reads (blocking): the ports this agent made and the chains it programmed,
        by the names the control plane gave them; None before the first desired network."""
        desired = self.desired
        if desired is None:
            return None
        ports = [
            PortCounters(port, interface, stats) for port, (interface, stats) in self.switch.port_statistics().items()
        ]
        by_cookie = self.switch.flow_statistics()
        chains = [
            ChainCounters(chain.name, *by_cookie.get(chain.cookie, (0, 0, 0)))
            for chain in desired.chains
            if chain.cookie in self.applied
        ]
        return ports, chains

    async def fetch(self) -> DesiredNetwork:
        resp = await self.http().get(self.server + NETWORK_PATH)
        if resp.status_code >= 400:
            raise RuntimeError(
                f"the control plane refused the network request: HTTP {resp.status_code} {resp.text[:300]}"
            )
        return DesiredNetwork.model_validate(resp.json())

    def converge(self, desired: DesiredNetwork) -> NetworkReport:
        """Ports, meters, then flows; what failed is in the report, never raised (but an unreachable OVSDB)."""
        repairs: list[Repair] = []
        port_errors: dict[str, str] = {
            i.name: i.problem for i in desired.interfaces if i.problem is not None
        }  # the control plane could not resolve them (a tunnel's remote, an underlay's address)
        ours = self.switch.our_ports()
        wanted = {i.port: i for i in desired.interfaces if i.problem is None}
        for port in sorted(set(ours) - set(wanted)):
            self.switch.delete_port(port, ours[port][1])
            self.known_ports.discard(port)
        if any(i.underlay for i in wanted.values()):
            try:
                self.switch.ensure_underlay()
            except OVSError as exc:
                for i in wanted.values():
                    if i.underlay or i.tunnel is not None:
                        port_errors[i.name] = f"the underlay bridge: {exc}"
        for port, iface in wanted.items():
            if iface.name in port_errors:
                continue
            if iface.type == "Service" and self.service_pid is not None:
                problem = self._attach(iface)
                if problem is not None:
                    port_errors[iface.name] = problem
                    continue
            if port in self.known_ports and port not in ours:
                repairs.append(
                    Repair(
                        kind="DPUServiceInterface",
                        name=iface.name,
                        message=f"port {port} was missing from "
                        f"{self.config.underlay_bridge if iface.underlay else self.config.bridge}; added it back",
                    )
                )
            try:
                self.switch.ensure_port(iface, ours.get(port, (None, None))[1])
                if iface.underlay and iface.address is not None:
                    self.switch.set_address(self.config.underlay_bridge, iface.address)
                self.known_ports.add(port)
            except OVSError as exc:
                port_errors[iface.name] = str(exc)
        stale_meters = self._meters(desired, repairs, port_errors)
        ofports = self.switch.ofports()
        counts = self.switch.flow_counts()
        reports: list[ChainReport] = []
        wanted_cookies = {c.cookie for c in desired.chains} | {NEIGHBOUR_COOKIE}
        for cookie in sorted((set(counts) | set(self.applied)) - wanted_cookies):
            self.switch.delete_flows(cookie)  # a chain deleted, or no longer for this DPU
            self.applied.pop(cookie, None)
        by_name = {i.name: i for i in desired.interfaces}
        pending: list[tuple[int, DesiredChain, list[str]]] = []
        neighbours: list[tuple[int, int, int]] = []
        for chain in desired.chains:
            report = self._chain(chain, by_name, ofports, counts, port_errors, repairs, pending)
            reports.append(report)
            if report.programmed:
                ports = {n: ofports[by_name[n].port] for n in chain.spec.interfaces()}
                neighbours += chain_neighbours(chain, ports)
        self._program(pending, reports)
        self._neighbours(render_neighbours(neighbours), counts)
        for meter in stale_meters:  # after the flows that used them moved on (a meter's deletion takes its flows)
            with contextlib.suppress(OVSError):
                self.switch.delete_meter(meter)
        return NetworkReport(chains=reports, repairs=repairs)

    def _attach(self, iface: DesiredInterface) -> str | None:
        """The Service interface's veth: `port` on the switch's side, `serviceInterface` inside the
        service's running instance (up, with the interface's address); made again when the instance
        restarted (a new namespace: the old pair went with the old one). None when in place."""
        assert self.service_pid is not None and iface.service is not None
        pid = self.service_pid(iface.service)
        if pid is None:
            return f"service {iface.service} has no running instance on this DPU (yet)"
        inner = iface.serviceInterface or iface.port
        # The same MAC in every instance of it: a restarted instance is not a new neighbour whose old
        # MAC its peers keep sending to until their ARP entries age out.
        dpu = self.desired.dpu if self.desired is not None else ""
        mac = iface.mac or service_mac(dpu, iface.name)
        try:
            if self.switch.attach_service(iface.port, inner, pid, iface.address, mac):
                # a port whose netdev vanished stays in error in OVS: open the new one as a new port
                self.switch.delete_port(iface.port)
        except OVSError as exc:
            return f"the veth into {iface.service}: {exc}"
        return None

    def _meters(self, desired: DesiredNetwork, repairs: list[Repair], port_errors: dict[str, str]) -> list[int]:
        """The QoS interfaces' meters made as wanted (a missing or changed one is drift); returns the
        meters no longer wanted, deleted only once the chains are reprogrammed."""
        wanted = render_meters(desired.interfaces)
        if not wanted and not self.meters_set:
            return []
        try:
            present = self.switch.meters()
        except OVSError as exc:
            for i in desired.interfaces:
                if i.qos is not None:
                    port_errors.setdefault(i.name, f"meters: {exc}")
            return []
        owners = {m: name for name, ids in meter_ids(desired.interfaces).items() for m in ids if m is not None}
        for meter, description in wanted.items():
            if present.get(meter) == description:
                continue
            if self.meters_set.get(meter) == description:
                repairs.append(
                    Repair(
                        kind="DPUServiceInterface",
                        name=owners[meter],
                        message=f"its QoS meter {meter} was {'changed' if meter in present else 'missing'}; set it again",
                    )
                )
            try:
                self.switch.set_meter(meter, description, exists=meter in present)
                self.meters_set[meter] = description
            except OVSError as exc:
                port_errors.setdefault(owners[meter], f"QoS meter {meter}: {exc}")
        stale = sorted(set(present) - set(wanted))
        for meter in stale:
            self.meters_set.pop(meter, None)
        return stale

    def _chain(
        self,
        chain: DesiredChain,
        interfaces: dict[str, DesiredInterface],
        ofports: dict[str, int],
        counts: dict[int, int],
        port_errors: dict[str, str],
        repairs: list[Repair],
        pending: list[tuple[int, DesiredChain, list[str]]],
    ) -> ChainReport:
        """The chain's report; flows to (re)write go to `pending` (one bundle for all, see _program)."""

        def failed(message: str) -> ChainReport:
            if counts.get(chain.cookie) or chain.cookie in self.applied:
                self.switch.delete_flows(chain.cookie)  # half a chain must not carry traffic
                self.applied.pop(chain.cookie, None)
            return ChainReport(name=chain.name, programmed=False, flows=0, lastError=message)

        if chain.missing:
            return failed(f"interfaces not on this DPU: {', '.join(chain.missing)}")
        broken = [f"{n}: {port_errors[n]}" for n in chain.spec.interfaces() if n in port_errors]
        if broken:
            return failed("; ".join(broken))
        underlays = [n for n in chain.spec.interfaces() if interfaces[n].underlay]
        if underlays:
            return failed(
                f"{', '.join(underlays)}: a tunnel's underlay is on {self.config.underlay_bridge}, not in a chain"
            )
        ports = {n: interfaces[n].port for n in chain.spec.interfaces()}
        absent = sorted(p for p in ports.values() if p not in ofports)
        if absent:
            return failed(f"no OpenFlow port yet for {', '.join(absent)} (is the netdev there?)")
        flows = render_chain(chain, {n: ofports[p] for n, p in ports.items()}, interfaces)
        fingerprint = _fingerprint(flows)
        before = self.applied.get(chain.cookie)
        present = counts.get(chain.cookie, 0)
        if before is not None and before.fingerprint == fingerprint and present == len(flows):
            return ChainReport(name=chain.name, programmed=True, flows=present)
        if before is not None and before.fingerprint == fingerprint:
            repairs.append(
                Repair(
                    kind="DPUServiceChain",
                    name=chain.name,
                    message=f"{len(flows) - present} of its {len(flows)} flows were missing "
                    f"(cookie {chain.cookie:#x}); reprogrammed",
                )
            )
        pending.append((len(pending), chain, flows))
        return ChainReport(name=chain.name, programmed=True, flows=len(flows))

    def _program(self, pending: list[tuple[int, DesiredChain, list[str]]], reports: list[ChainReport]) -> None:
        """Write every changed chain in one atomic bundle (each its cookie's delete and adds; other
        chains untouched); if the bundle is refused, chain by chain, so only the bad one fails."""
        if not pending:
            return
        index = {r.name: i for i, r in enumerate(reports)}
        try:
            self.switch.replace_many([(chain.cookie, flows) for _, chain, flows in pending])
        except OVSError:
            for _, chain, flows in pending:
                try:
                    self.switch.replace_flows(chain.cookie, flows)
                except OVSError as exc:
                    self.applied.pop(chain.cookie, None)
                    reports[index[chain.name]] = ChainReport(
                        name=chain.name, programmed=False, flows=0, lastError=str(exc)
                    )
                    with contextlib.suppress(OVSError):
                        self.switch.delete_flows(chain.cookie)
                    continue
                self.applied[chain.cookie] = _Applied(_fingerprint(flows), len(flows))
            return
        for _, chain, flows in pending:
            self.applied[chain.cookie] = _Applied(_fingerprint(flows), len(flows))

    def _neighbours(self, flows: list[str], counts: dict[int, int]) -> None:
        """The shared ARP flows, rewritten when what they should be changes or some went missing."""
        fingerprint = _fingerprint(flows)
        before = self.applied.get(NEIGHBOUR_COOKIE)
        if before is not None and before.fingerprint == fingerprint and counts.get(NEIGHBOUR_COOKIE, 0) == len(flows):
            return
        if before is None and not flows and not counts.get(NEIGHBOUR_COOKIE):
            return
        try:
            self.switch.replace_flows(NEIGHBOUR_COOKIE, flows)
        except OVSError as exc:
            log.warning("network: cannot write the ARP flows: %s", exc)
            self.applied.pop(NEIGHBOUR_COOKIE, None)
            return
        self.applied[NEIGHBOUR_COOKIE] = _Applied(fingerprint, len(flows))

    async def send(self, report: NetworkReport, now: float) -> None:
        key = report.model_dump(exclude={"repairs"})
        if not report.repairs and self._last_sent is not None:
            last, at = self._last_sent
            if last == key and now - at < REPORT_EVERY:
                return
        resp = await self.http().post(self.server + NETWORK_PATH + "/status", json=report.model_dump())
        if resp.status_code >= 400:
            raise RuntimeError(
                f"the control plane refused the network status: HTTP {resp.status_code} {resp.text[:300]}"
            )
        self._last_sent = (key, now)

    async def once(self) -> NetworkReport | None:
        """One pass: read the desired network (else keep the last one), converge, report."""
        loop = asyncio.get_running_loop()
        try:
            self.desired = await self.fetch()
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            log.warning("network: cannot read the desired network (%s); keeping the last one", exc)
        if self.desired is None:
            return None
        report = await asyncio.to_thread(self.converge, self.desired)
        self.repairs_made += len(report.repairs)
        for repair in report.repairs:
            log.warning("network drift repaired: %s %s: %s", repair.kind, repair.name, repair.message)
        try:
            await self.send(report, loop.time())
        except (httpx.HTTPError, RuntimeError) as exc:
            log.warning("network: cannot send the status (%s)", exc)
            self._last_sent = None
        return report

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.once()
                except OVSError as exc:
                    log.warning("network: %s", exc)
                    await asyncio.to_thread(self.switch.close)  # reconnect next time
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.interval)
        finally:
            await asyncio.to_thread(self.switch.close)
