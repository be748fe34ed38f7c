"""What one DPU's data plane should be: the interfaces and chains that select it, with their addresses.

The agent asks for this over the agent protocol (`GET /agent/v1/network`) and renders it; it keeps no
other copy, so after a restart it rebuilds the data plane from this alone.
"""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

from pydantic import BaseModel

from ..api.agent_network import DesiredChain, DesiredInterface, DesiredNetwork, DesiredTunnel
from ..api.errors import NotFound
from ..api.kinds import DPUServiceChainSpec, DPUServiceInterfaceSpec, DPUServiceIPAMSpec, TunnelSpec, chain_cookie
from ..store.store import Store
from .ipam import PoolExhausted, address_in, allocate

T = TypeVar("T", bound=BaseModel)
_SPECS: dict[tuple[str, str, str, str], Any] = {}  # (kind, project, uid, generation) -> its parsed spec
_SPECS_MAX = 100_000


def _spec(doc: dict[str, Any], model: type[T], project: str) -> T:
    """The stored document's spec, parsed once per generation: every agent asks every second, and a
    stored spec only changes with its generation (a status write leaves it)."""
    meta = doc.get("metadata") or {}
    if not meta.get("uid") or not meta.get("generation"):
        return model.model_validate(doc["spec"])
    key = (model.__name__, project, str(meta["uid"]), str(meta["generation"]))
    found = _SPECS.get(key)
    if found is None:
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.clear()
        found = _SPECS[key] = model.model_validate(doc["spec"])
    return found


def _labels(dpu: dict[str, Any]) -> dict[str, str]:
    return dict((dpu.get("metadata") or {}).get("labels") or {})


def desired_network(store: Store, project: str, dpu: str) -> DesiredNetwork:
    """The DPU's interfaces (addresses from their pools, tunnels' endpoints resolved) and the chains
    whose interfaces it all has."""
    labels = _labels(store.get("DPU", dpu, project))
    specs: dict[str, DPUServiceInterfaceSpec] = {}
    for doc in store.list("DPUServiceInterface", project).items:
        spec = _spec(doc, DPUServiceInterfaceSpec, project)
        if spec.dpuSelector.matches(labels):
            specs[doc["metadata"]["name"]] = spec
    underlays = {s.tunnel.underlay for s in specs.values() if s.tunnel is not None}
    interfaces: dict[str, DesiredInterface] = {}
    for name, spec in specs.items():
        address: str | None = None
        if spec.ipam is not None:
            address = _address(store, project, spec.ipam, dpu, on_pool_subnet=name in underlays)
        tunnel, problem = (None, None)
        if spec.tunnel is not None:
            tunnel, problem = _tunnel(store, project, dpu, spec.tunnel, specs)
        elif name in underlays:
            if spec.type != "Physical":
                problem = f"a tunnel's underlay must be a Physical interface (this one is {spec.type})"
            elif address is None:
                problem = f"no underlay address: give it an ipam pool (ipam: {spec.ipam or 'unset'})"
        interfaces[name] = DesiredInterface(
            name=name,
            type=spec.type,
            port=spec.port,
            vlan=spec.vlan,
            mtu=spec.mtu,
            mac=spec.mac,
            address=address,
            peerBridge=spec.patch.peerBridge if spec.patch else None,
            qos=spec.qos,
            conntrack=spec.conntrack,
            tunnel=tunnel,
            service=spec.service.service if spec.service else None,
            serviceInterface=spec.service.interface if spec.service else None,
            underlay=name in underlays,
            problem=problem,
        )
    chains: list[DesiredChain] = []
    for doc in store.list("DPUServiceChain", project).items:
        if (doc.get("metadata") or {}).get("deletionTimestamp"):
            continue
        chain = _spec(doc, DPUServiceChainSpec, project)
        if not chain.dpuSelector.matches(labels):
            continue
        name = doc["metadata"]["name"]
        missing = [i for i in chain.interfaces() if i not in interfaces]
        chains.append(
            DesiredChain(
                name=name,
                cookie=chain_cookie(project, name),
                spec=chain,
                missing=missing,
            )
        )
    return DesiredNetwork(dpu=dpu, interfaces=sorted(interfaces.values(), key=lambda i: i.name), chains=chains)


def _tunnel(
    store: Store, project: str, dpu: str, tunnel: TunnelSpec, specs: dict[str, DPUServiceInterfaceSpec]
) -> tuple[DesiredTunnel | None, str | None]:
    """Both ends of a tunnel as addresses: this DPU's and the remote DPU's address on the underlay."""
    underlay = specs.get(tunnel.underlay)
    if underlay is None:
        return None, f"tunnel.underlay: interface {tunnel.underlay} does not select this DPU"
    if underlay.ipam is None:
        return None, f"tunnel.underlay: interface {tunnel.underlay} has no ipam pool to address it"
    local = _address(store, project, underlay.ipam, dpu, on_pool_subnet=True)
    if local is None:
        return None, f"tunnel.underlay: pool {underlay.ipam} gave this DPU no address (see its status)"
    remote = tunnel.remoteAddress
    if tunnel.remoteDPU is not None:
        try:
            store.get("DPU", tunnel.remoteDPU, project)
        except NotFound:
            return None, f"tunnel.remoteDPU: no DPU {tunnel.remoteDPU}"
        found = _address(store, project, underlay.ipam, tunnel.remoteDPU, on_pool_subnet=True)
        if found is None:
            return None, f"tunnel.remoteDPU: pool {underlay.ipam} gave {tunnel.remoteDPU} no address"
        remote = found.split("/")[0]
    assert remote is not None  # the kind requires one of the two
    return DesiredTunnel(protocol=tunnel.protocol, vni=tunnel.vni, local=local.split("/")[0], remote=remote), None


def _address(store: Store, project: str, pool: str, dpu: str, on_pool_subnet: bool = False) -> str | None:
    """The DPU's address from the pool: its block's first host address, with the block's prefix length,
    or the pool's (`on_pool_subnet`: an underlay, where every DPU's endpoint shares one subnet)."""
    try:
        spec = DPUServiceIPAMSpec.model_validate(store.get("DPUServiceIPAM", pool, project)["spec"])
        block = allocate(store, project, pool, spec, dpu)
    except (NotFound, PoolExhausted):
        return None  # the IPAM's own status says why (its controller reports exhaustion)
    cidr = block.ipv4 or block.ipv6 or ""
    if not on_pool_subnet:
        return address_in(cidr)
    network = ipaddress.ip_network(cidr)
    host = network.network_address + (1 if network.num_addresses > 2 else 0)
    pool_spec = spec.ipv4 if block.ipv4 else spec.ipv6
    assert pool_spec is not None
    return f"{host}/{ipaddress.ip_network(pool_spec.cidr).prefixlen}"
