"""The DPU's data plane: address pools, interfaces and service function chains.

- **DPUServiceIPAM**: an address pool (IPv4 and/or IPv6) carved into per-DPU blocks of one prefix length.
  The blocks handed out are recorded in one IPAMAllocation per pool (named after it), written with its
  resourceVersion as precondition, so two allocators never hand out the same block.
- **DPUServiceInterface**: a named attachment point on every DPU its selector matches: a physical port,
  a PF or VF representor, a service instance's interface (a veth into the service's namespace) or a
  patch to another bridge; with an optional VLAN, MTU, MAC and an address from a pool.
- **DPUServiceChain**: an ordered path of hops (interfaces, or a service's ingress/egress pair) with an
  optional match; traffic entering at the head passes each service in order and leaves at the tail (and
  back, unless `bidirectional: false`). The DPU's agent renders it into OpenFlow rules under one cookie
  per chain and reports, per DPU, whether it is programmed.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..meta import Name, Status, Strict
from ..selectors import LabelSelector
from .base import Resource
from .registry import Column, KindInfo, register

# An OVS port name is a Linux netdev name: at most 15 characters, no slash or whitespace.
_PORT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def _ip_prefix(value: str | None) -> str | None:
    """An IPv4/IPv6 prefix in its canonical form (host bits cleared); None stays None."""
    if value is None:
        return None
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP prefix ({exc})") from None


# --- DPUServiceIPAM ---------------------------------------------------------------------------------------------


class IPAMPool(Strict):
    """One address family's pool: the CIDR, and the prefix length of the block each DPU gets from it."""

    cidr: str = Field(description="e.g. 198.51.100.0/24 or 2001:db8::/48")
    blockPrefixLength: int = Field(ge=1, le=128, description="each DPU's block, e.g. 28 (16 addresses)")

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network in CIDR form ({exc})") from None

    @model_validator(mode="after")
    def _block_inside(self) -> IPAMPool:
        network = ipaddress.ip_network(self.cidr)
        if self.blockPrefixLength < network.prefixlen:
            raise ValueError(f"blockPrefixLength: /{self.blockPrefixLength} is larger than the pool {self.cidr} itself")
        if self.blockPrefixLength > network.max_prefixlen:
            raise ValueError(f"blockPrefixLength: /{self.blockPrefixLength} is beyond IPv{network.version}")
        return self

    def block_count(self) -> int:
        return 2 ** (self.blockPrefixLength - ipaddress.ip_network(self.cidr).prefixlen)


class DPUServiceIPAMSpec(Strict):
    ipv4: IPAMPool | None = None
    ipv6: IPAMPool | None = None
    dpuSelector: LabelSelector = Field(default_factory=LabelSelector, description="the DPUs that get a block")

    @field_validator("ipv4")
    @classmethod
    def _v4(cls, pool: IPAMPool | None) -> IPAMPool | None:
        if pool is not None and ipaddress.ip_network(pool.cidr).version != 4:
            raise ValueError(f"cidr: {pool.cidr} is not an IPv4 network")
        return pool

    @field_validator("ipv6")
    @classmethod
    def _v6(cls, pool: IPAMPool | None) -> IPAMPool | None:
        if pool is not None and ipaddress.ip_network(pool.cidr).version != 6:
            raise ValueError(f"cidr: {pool.cidr} is not an IPv6 network")
        return pool

    @model_validator(mode="after")
    def _some_family(self) -> DPUServiceIPAMSpec:
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError("ipv4, ipv6: give at least one pool")
        return self


class DPUServiceIPAMStatus(Status):
    allocated: int = Field(default=0, description="DPUs holding a block")
    available: int = Field(default=0, description="blocks left in the smallest family's pool")


class DPUServiceIPAM(Resource):
    kind: Literal["DPUServiceIPAM"] = "DPUServiceIPAM"
    spec: DPUServiceIPAMSpec
    status: DPUServiceIPAMStatus = Field(default_factory=DPUServiceIPAMStatus)


register(
    KindInfo(
        "DPUServiceIPAM",
        "dpuserviceipams",
        DPUServiceIPAM,
        ("dpuserviceipam", "ipam", "ipams"),
        (
            Column("IPV4", "spec.ipv4.cidr"),
            Column("IPV6", "spec.ipv6.cidr"),
            Column("ALLOCATED", "status.allocated"),
            Column("AVAILABLE", "status.available"),
            Column("READY", "status.conditions[Ready].status"),
            Column("REASON", "status.conditions[Ready].reason", wide_only=True),
        ),
    )
)


class IPAMBlock(Strict):
    """The block of one DPU, per family."""

    dpu: Name
    ipv4: str | None = None
    ipv6: str | None = None


class IPAMAllocationSpec(Strict):
    """Every block of one pool; written only with its resourceVersion as precondition (or created once)."""

    pool: Name
    blocks: list[IPAMBlock] = Field(default_factory=list)


class IPAMAllocation(Resource):
    kind: Literal["IPAMAllocation"] = "IPAMAllocation"
    spec: IPAMAllocationSpec
    status: Status = Field(default_factory=Status)


register(
    KindInfo(
        "IPAMAllocation",
        "ipamallocations",
        IPAMAllocation,
        ("ipamallocation",),
        (Column("POOL", "spec.pool"), Column("DPUS", "spec.blocks[*].dpu")),
    )
)

# --- DPUServiceInterface --------------------------------------------------------------------------------------

InterfaceType = Literal["Physical", "PFRepresentor", "VFRepresentor", "Service", "Patch", "Tunnel"]


class ServiceAttachment(Strict):
    """A service instance's interface: the DPU-side end of a veth into the service's namespace."""

    service: Name
    interface: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$", description="its name inside the service")


class PatchAttachment(Strict):
    peerBridge: str = Field(pattern=_PORT_NAME)


class InterfaceQoS(Strict):
    """A rate limit on the traffic that enters the switch from this interface (OpenFlow meters: what
    exceeds the rate after the burst is dropped)."""

    maxRateBps: int | None = Field(default=None, ge=1000, description="bits per second (kept to whole kilobits)")
    burstBits: int | None = Field(default=None, ge=1000, description="with maxRateBps: the bucket's depth")
    maxRatePps: int | None = Field(default=None, ge=1, description="packets per second")
    burstPackets: int | None = Field(default=None, ge=1, description="with maxRatePps: the bucket's depth")

    @model_validator(mode="after")
    def _rates(self) -> InterfaceQoS:
        if self.maxRateBps is None and self.maxRatePps is None:
            raise ValueError("maxRateBps, maxRatePps: give at least one rate")
        if self.burstBits is not None and self.maxRateBps is None:
            raise ValueError("burstBits: only with maxRateBps")
        if self.burstPackets is not None and self.maxRatePps is None:
            raise ValueError("burstPackets: only with maxRatePps")
        return self


class ConntrackRule(Strict):
    """A kind of connection that may be opened: its protocol, the port connected to, the far end's prefix."""

    protocol: Literal["tcp", "udp", "icmp"]
    port: int | None = Field(default=None, ge=1, le=65535, description="the port connected to (tcp/udp)")
    prefix: str | None = Field(default=None, description="the far end's IPv4/IPv6 prefix")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return _ip_prefix(value)

    @model_validator(mode="after")
    def _port_needs_protocol(self) -> ConntrackRule:
        if self.port is not None and self.protocol == "icmp":
            raise ValueError("port: only with protocol tcp or udp")
        return self


class InterfaceConntrack(Strict):
    """A stateful allow-list at this interface (IP traffic of the chains through it; ARP passes).

    `allowOutbound`: connections the side behind the interface may open (its traffic entering the
    switch); `allowInbound`: connections that may be opened towards it. Replies of an allowed
    connection pass both ways; any other new connection is dropped."""

    allowOutbound: list[ConntrackRule] = Field(default_factory=list, max_length=256)
    allowInbound: list[ConntrackRule] = Field(default_factory=list, max_length=256)


class TunnelSpec(Strict):
    """An overlay port: traffic sent to it is encapsulated to the remote DPU's underlay address."""

    protocol: Literal["Geneve", "VXLAN"]
    vni: int = Field(ge=1, le=16_777_215, description="the virtual network's identifier")
    underlay: Name = Field(
        description="a Physical DPUServiceInterface with an ipam pool: its address on each DPU is that "
        "DPU's tunnel endpoint, and its port moves to the underlay bridge"
    )
    remoteDPU: Name | None = Field(default=None, description="the DPU at the other end (its underlay address)")
    remoteAddress: str | None = Field(default=None, description="or the other end's address, given")

    @field_validator("remoteAddress")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address ({exc})") from None

    @model_validator(mode="after")
    def _one_remote(self) -> TunnelSpec:
        if (self.remoteDPU is None) == (self.remoteAddress is None):
            raise ValueError("remoteDPU, remoteAddress: give exactly one")
        return self


class DPUServiceInterfaceSpec(Strict):
    type: InterfaceType
    port: str = Field(pattern=_PORT_NAME, description="the OVS port (the netdev on the DPU), e.g. p0, pf0hpf")
    pf: int | None = Field(default=None, ge=0, le=7, description="PFRepresentor/VFRepresentor: the PF")
    vf: int | None = Field(default=None, ge=0, le=1023, description="VFRepresentor: the VF")
    service: ServiceAttachment | None = None
    patch: PatchAttachment | None = None
    tunnel: TunnelSpec | None = None
    qos: InterfaceQoS | None = None
    conntrack: InterfaceConntrack | None = None
    vlan: int | None = Field(default=None, ge=1, le=4094, description="access VLAN tag of the port")
    mtu: int | None = Field(default=None, ge=68, le=9216)
    mac: str | None = None
    ipam: Name | None = Field(default=None, description="a DPUServiceIPAM: the interface gets an address from it")
    dpuSelector: LabelSelector = Field(default_factory=LabelSelector)

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.lower()
            if not _MAC.match(value):
                raise ValueError(f"{value!r} is not a MAC address (six hex pairs joined by ':')")
            if int(value[:2], 16) & 1:
                raise ValueError(f"{value} is a multicast address: an interface needs a unicast MAC")
        return value

    @model_validator(mode="after")
    def _type_fields(self) -> DPUServiceInterfaceSpec:
        wants = {
            "Physical": set(),
            "PFRepresentor": {"pf"},
            "VFRepresentor": {"pf", "vf"},
            "Service": {"service"},
            "Patch": {"patch"},
            "Tunnel": {"tunnel"},
        }[self.type]
        for name in ("pf", "vf", "service", "patch", "tunnel"):
            given = getattr(self, name) is not None
            if name in wants and not given:
                raise ValueError(f"{name}: required when type is {self.type}")
            if name not in wants and given:
                raise ValueError(f"{name}: only with type {_OWNERS[name]} (type is {self.type})")
        return self


_OWNERS = {
    "pf": "PFRepresentor or VFRepresentor",
    "vf": "VFRepresentor",
    "service": "Service",
    "patch": "Patch",
    "tunnel": "Tunnel",
}


class DPUServiceInterfaceStatus(Status):
    addresses: dict[str, str] = Field(default_factory=dict, description="DPU name -> address from the pool")


class DPUServiceInterface(Resource):
    kind: Literal["DPUServiceInterface"] = "DPUServiceInterface"
    spec: DPUServiceInterfaceSpec
    status: DPUServiceInterfaceStatus = Field(default_factory=DPUServiceInterfaceStatus)


register(
    KindInfo(
        "DPUServiceInterface",
        "dpuserviceinterfaces",
        DPUServiceInterface,
        ("dpuserviceinterface", "dsi", "interfaces"),
        (
            Column("TYPE", "spec.type"),
            Column("PORT", "spec.port"),
            Column("VLAN", "spec.vlan"),
            Column("IPAM", "spec.ipam", wide_only=True),
            Column("QOS-BPS", "spec.qos.maxRateBps", wide_only=True),
            Column("QOS-PPS", "spec.qos.maxRatePps", wide_only=True),
            Column("TUNNEL", "spec.tunnel.protocol", wide_only=True),
            Column("VNI", "spec.tunnel.vni", wide_only=True),
        ),
    )
)

# --- DPUServiceChain ------------------------------------------------------------------------------------------


class Hop(Strict):
    """One step of a chain: an interface (head, tail, or a one-port hop), or a service's two interfaces
    (traffic goes into `ingress` and comes back out of `egress`)."""

    interface: Name | None = None
    ingress: Name | None = None
    egress: Name | None = None

    @model_validator(mode="after")
    def _shape(self) -> Hop:
        if self.interface is not None and (self.ingress is not None or self.egress is not None):
            raise ValueError("interface: give either interface, or ingress and egress, not both")
        if self.interface is None and (self.ingress is None or self.egress is None):
            raise ValueError("ingress, egress: a service hop names both (or give interface)")
        if self.ingress is not None and self.ingress == self.egress:
            raise ValueError(f"egress: must differ from ingress ({self.ingress})")
        return self

    @property
    def entry(self) -> str:
        """The interface traffic of the forward direction enters this hop by."""
        return self.interface or self.ingress or ""

    @property
    def exit(self) -> str:
        return self.interface or self.egress or ""


class ChainMatch(Strict):
    """What traffic the chain takes at its head (all of it when empty)."""

    vlan: int | None = Field(default=None, ge=1, le=4094)
    prefix: str | None = Field(default=None, description="destination IPv4/IPv6 prefix of forward traffic")
    protocol: Literal["tcp", "udp", "icmp"] | None = None
    port: int | None = Field(default=None, ge=1, le=65535, description="destination port (tcp/udp)")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return _ip_prefix(value)

    @model_validator(mode="after")
    def _port_needs_protocol(self) -> ChainMatch:
        if self.port is not None and self.protocol not in ("tcp", "udp"):
            raise ValueError("port: needs protocol tcp or udp")
        return self

    def is_empty(self) -> bool:
        return self.vlan is None and self.prefix is None and self.protocol is None


class DPUServiceChainSpec(Strict):
    hops: list[Hop] = Field(min_length=2, description="head first, tail last")
    match: ChainMatch = Field(default_factory=ChainMatch)
    bidirectional: bool = True
    dpuSelector: LabelSelector = Field(default_factory=LabelSelector)

    @model_validator(mode="after")
    def _distinct_interfaces(self) -> DPUServiceChainSpec:
        seen: list[str] = []
        for hop in self.hops:
            seen += [n for n in (hop.interface, hop.ingress, hop.egress) if n is not None]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise ValueError(f"hops: interface {', '.join(twice)} appears more than once")
        return self

    def interfaces(self) -> list[str]:
        names: list[str] = []
        for hop in self.hops:
            names += [n for n in (hop.interface, hop.ingress, hop.egress) if n is not None]
        return names


class ChainOnDPU(Strict):
    """What one DPU's agent reported about the chain."""

    dpu: str
    programmed: bool = False
    flows: int = 0
    lastError: str | None = None
    at: str | None = None


class DPUServiceChainStatus(Status):
    dpus: list[ChainOnDPU] = Field(default_factory=list)
    programmed: int = Field(default=0, description="DPUs that report the chain programmed")
    selected: int = Field(default=0, description="DPUs the selector matches")


class DPUServiceChain(Resource):
    kind: Literal["DPUServiceChain"] = "DPUServiceChain"
    spec: DPUServiceChainSpec
    status: DPUServiceChainStatus = Field(default_factory=DPUServiceChainStatus)


register(
    KindInfo(
        "DPUServiceChain",
        "dpuservicechains",
        DPUServiceChain,
        ("dpuservicechain", "chain", "chains"),
        (
            Column("SELECTED", "status.selected"),
            Column("PROGRAMMED", "status.programmed"),
            Column("READY", "status.conditions[Ready].status"),
        ),
    )
)


def chain_cookie(project: str, name: str) -> int:
    """The OpenFlow cookie of a chain's flows: stable across restarts, one per chain, never 0."""
    return (0xDF << 56) | (zlib.crc32(f"{project}/{name}".encode()) << 8) | 1
