"""What one DPU's data plane should be: the interfaces and chains that select it, with their addresses.

The agent asks for this over the agent protocol (`GET /agent/v1/network`) and renders it; it keeps no
other copy, so after a restart it rebuilds the data plane from this alone.
"""

from __future__ import annotations

from typing import Any

from ..api.agent_network import DesiredChain, DesiredInterface, DesiredNetwork
from ..api.errors import NotFound
from ..api.kinds import DPUServiceChainSpec, DPUServiceInterfaceSpec, DPUServiceIPAMSpec, chain_cookie
from ..store.store import Store
from .ipam import PoolExhausted, address_in, allocate


def _labels(dpu: dict[str, Any]) -> dict[str, str]:
    return dict((dpu.get("metadata") or {}).get("labels") or {})


def desired_network(store: Store, project: str, dpu: str) -> DesiredNetwork:
    """The DPU's interfaces (addresses from their pools) and the chains whose interfaces it all has."""
    labels = _labels(store.get("DPU", dpu, project))
    interfaces: dict[str, DesiredInterface] = {}
    for doc in store.list("DPUServiceInterface", project).items:
        spec = DPUServiceInterfaceSpec.model_validate(doc["spec"])
        if not spec.dpuSelector.matches(labels):
            continue
        address: str | None = None
        if spec.ipam is not None:
            address = _address(store, project, spec.ipam, dpu)
        interfaces[doc["metadata"]["name"]] = DesiredInterface(
            name=doc["metadata"]["name"],
            type=spec.type,
            port=spec.port,
            vlan=spec.vlan,
            mtu=spec.mtu,
            mac=spec.mac,
            address=address,
            peerBridge=spec.patch.peerBridge if spec.patch else None,
        )
    chains: list[DesiredChain] = []
    for doc in store.list("DPUServiceChain", project).items:
        if (doc.get("metadata") or {}).get("deletionTimestamp"):
            continue
        chain = DPUServiceChainSpec.model_validate(doc["spec"])
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


def _address(store: Store, project: str, pool: str, dpu: str) -> str | None:
    try:
        spec = DPUServiceIPAMSpec.model_validate(store.get("DPUServiceIPAM", pool, project)["spec"])
        block = allocate(store, project, pool, spec, dpu)
    except (NotFound, PoolExhausted):
        return None  # the IPAM's own status says why (its controller reports exhaustion)
    return address_in(block.ipv4 or block.ipv6 or "")
