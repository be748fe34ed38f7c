"""The agent protocol's network messages: what the DPU's data plane should be, and what the agent made of it.

GET  /agent/v1/network          -> DesiredNetwork (the DPU the client certificate names)
POST /agent/v1/network/status   <- NetworkReport (one ChainReport per chain, the repairs it made)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .kinds import DPUServiceChainSpec, InterfaceConntrack, InterfaceQoS, InterfaceType


class DesiredTunnel(BaseModel):
    """A tunnel port as the agent renders it: both endpoints resolved to addresses."""

    protocol: Literal["Geneve", "VXLAN"]
    vni: int
    local: str  # this DPU's underlay address (no prefix length)
    remote: str


class DesiredInterface(BaseModel):
    name: str
    type: InterfaceType
    port: str
    vlan: int | None = None
    mtu: int | None = None
    mac: str | None = None
    address: str | None = None
    peerBridge: str | None = None
    qos: InterfaceQoS | None = None
    conntrack: InterfaceConntrack | None = None
    tunnel: DesiredTunnel | None = None
    service: str | None = Field(default=None, description="Service: the DPUService whose instance it enters")
    serviceInterface: str | None = Field(default=None, description="Service: its name inside the instance")
    underlay: bool = Field(default=False, description="a tunnel's underlay: on the underlay bridge, addressed")
    problem: str | None = Field(default=None, description="why it cannot be rendered (the control plane's view)")


class DesiredChain(BaseModel):
    name: str
    cookie: int
    spec: DPUServiceChainSpec
    missing: list[str] = Field(default_factory=list, description="interfaces the DPU does not have")


class DesiredNetwork(BaseModel):
    dpu: str
    interfaces: list[DesiredInterface] = Field(default_factory=list)
    chains: list[DesiredChain] = Field(default_factory=list)


class ChainReport(BaseModel):
    name: str = Field(min_length=1, max_length=253)
    programmed: bool
    flows: int = Field(ge=0)
    lastError: str | None = Field(default=None, max_length=2000)


class Repair(BaseModel):
    """Drift the agent found and undid: which object, what it found."""

    kind: str = Field(pattern="^(DPUServiceChain|DPUServiceInterface)$")
    name: str = Field(min_length=1, max_length=253)
    message: str = Field(max_length=2000)


class NetworkReport(BaseModel):
    chains: list[ChainReport] = Field(default_factory=list, max_length=10_000)
    repairs: list[Repair] = Field(default_factory=list, max_length=1000)
