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
import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..api.agent_network import ChainReport, DesiredChain, DesiredInterface, DesiredNetwork, NetworkReport, Repair
from ..api.kinds import ChainMatch

log = logging.getLogger(__name__)
NETWORK_PATH = "/agent/v1/network"
OWNER_KEY = "dpufleet-interface"
COOKIE_TAG = 0xDF  # the top byte of every chain cookie (api/kinds/network.chain_cookie)
_COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")
REPORT_EVERY = 30.0  # an unchanged report is sent again this often


class OVSError(RuntimeError):
    pass


@dataclass
class NetworkConfig:
    """Where the DPU's switch is: its OVSDB, its bridge, and the run dir holding `<bridge>.mgmt`."""

    ovsdb: str
    bridge: str
    rundir: Path
    netns: str | None = None  # the namespace of the DPU's ports (the emulator's; informational)
    interval: float = 1.0

    @property
    def openflow(self) -> str:
        return f"unix:{self.rundir}/{self.bridge}.mgmt"


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


def render_chain(chain: DesiredChain, ofports: dict[str, int]) -> list[str]:
    """The chain's flows (ovs-ofctl syntax, without the cookie): hop i's exit to hop i+1's entry, and back."""
    spec = chain.spec
    match = spec.match
    priority = 100 + 10 * sum(x is not None for x in (match.vlan, match.prefix, match.protocol, match.port))
    ip_level = match.prefix is not None or match.protocol is not None
    flows: list[str] = []
    for here, there in zip(spec.hops, spec.hops[1:], strict=False):
        legs = [(ofports[here.exit], ofports[there.entry], True)]
        if spec.bidirectional:
            legs.append((ofports[there.entry], ofports[here.exit], False))
        for src, dst, forward in legs:
            fields = ",".join([f"priority={priority}", f"in_port={src}", *_match_fields(match, forward)])
            flows.append(f"{fields},actions=output:{dst}")
            if ip_level and (match.prefix is None or ":" not in match.prefix):
                flows.append(f"priority={priority - 1},in_port={src},arp,actions=output:{dst}")  # neighbours resolve
    return flows


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
                self._api = impl_idl.OvsdbIdl(connection.Connection(idl=idl, timeout=10))
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

    def our_ports(self) -> dict[str, str]:
        """Port name -> the interface object it renders, for the ports this agent made."""
        bridge = self.config.bridge
        rows = self._do(self.api().db_find("Interface", columns=["name", "external_ids"]))
        on_bridge = set(self._do(self.api().list_ports(bridge)))
        return {
            r["name"]: r["external_ids"][OWNER_KEY]
            for r in rows
            if OWNER_KEY in r["external_ids"] and r["name"] in on_bridge
        }

    def ensure_port(self, iface: DesiredInterface) -> None:
        api, bridge = self.api(), self.config.bridge
        with api.transaction(check_error=True) as txn:
            txn.add(api.add_port(bridge, iface.port, may_exist=True))
            columns: list[tuple[str, Any]] = [("external_ids", {OWNER_KEY: iface.name})]
            if iface.mtu is not None:
                columns.append(("mtu_request", iface.mtu))
            if iface.type == "Patch" and iface.peerBridge:
                columns += [("type", "patch"), ("options", {"peer": f"{iface.port}-peer"})]
            if iface.mac is not None:
                columns.append(("external_ids", {OWNER_KEY: iface.name, "attached-mac": iface.mac}))
            txn.add(api.db_set("Interface", iface.port, *columns))
            txn.add(api.db_set("Port", iface.port, ("tag", iface.vlan if iface.vlan is not None else [])))

    def delete_port(self, port: str) -> None:
        self._do(self.api().del_port(port, self.config.bridge, if_exists=True))

    def ofports(self) -> dict[str, int]:
        rows = self._do(self.api().db_find("Interface", columns=["name", "ofport"]))
        found: dict[str, int] = {}
        for r in rows:
            ofport = r["ofport"]
            if isinstance(ofport, list):
                ofport = ofport[0] if ofport else -1
            if isinstance(ofport, int) and ofport > 0:
                found[r["name"]] = ofport
        return found

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

    def replace_flows(self, cookie: int, flows: list[str]) -> None:
        """One bundle: delete the cookie's flows, add these (atomic; other cookies untouched)."""
        lines = [f"delete cookie={cookie:#x}/-1", *(f"add cookie={cookie:#x},{flow}" for flow in flows)]
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
    repairs_made: int = 0
    _last_sent: tuple[Any, float] | None = None

    def __post_init__(self) -> None:
        self.switch = Switch(self.config)

    async def fetch(self) -> DesiredNetwork:
        resp = await self.http().get(self.server + NETWORK_PATH)
        if resp.status_code >= 400:
            raise RuntimeError(
                f"the control plane refused the network request: HTTP {resp.status_code} {resp.text[:300]}"
            )
        return DesiredNetwork.model_validate(resp.json())

    def converge(self, desired: DesiredNetwork) -> NetworkReport:
        """Ports, then flows; what failed is in the report, never raised (but an unreachable OVSDB)."""
        repairs: list[Repair] = []
        port_errors: dict[str, str] = {}
        ours = self.switch.our_ports()
        wanted = {i.port: i for i in desired.interfaces}
        for port in sorted(set(ours) - set(wanted)):
            self.switch.delete_port(port)
            self.known_ports.discard(port)
        for port, iface in wanted.items():
            if port in self.known_ports and port not in ours:
                repairs.append(
                    Repair(
                        kind="DPUServiceInterface",
                        name=iface.name,
                        message=f"port {port} was missing from {self.config.bridge}; added it back",
                    )
                )
            try:
                self.switch.ensure_port(iface)
                self.known_ports.add(port)
            except OVSError as exc:
                port_errors[iface.name] = str(exc)
        ofports = self.switch.ofports()
        counts = self.switch.flow_counts()
        reports: list[ChainReport] = []
        wanted_cookies = {c.cookie for c in desired.chains}
        for cookie in sorted((set(counts) | set(self.applied)) - wanted_cookies):
            self.switch.delete_flows(cookie)  # a chain deleted, or no longer for this DPU
            self.applied.pop(cookie, None)
        by_name = {i.name: i for i in desired.interfaces}
        for chain in desired.chains:
            reports.append(self._chain(chain, by_name, ofports, counts, port_errors, repairs))
        return NetworkReport(chains=reports, repairs=repairs)

    def _chain(
        self,
        chain: DesiredChain,
        interfaces: dict[str, DesiredInterface],
        ofports: dict[str, int],
        counts: dict[int, int],
        port_errors: dict[str, str],
        repairs: list[Repair],
    ) -> ChainReport:
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
        ports = {n: interfaces[n].port for n in chain.spec.interfaces()}
        absent = sorted(p for p in ports.values() if p not in ofports)
        if absent:
            return failed(f"no OpenFlow port yet for {', '.join(absent)} (is the netdev there?)")
        flows = render_chain(chain, {n: ofports[p] for n, p in ports.items()})
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
        try:
            self.switch.replace_flows(chain.cookie, flows)
        except OVSError as exc:
            self.applied.pop(chain.cookie, None)
            return ChainReport(name=chain.name, programmed=False, flows=0, lastError=str(exc))
        self.applied[chain.cookie] = _Applied(fingerprint, len(flows))
        return ChainReport(name=chain.name, programmed=True, flows=len(flows))

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
