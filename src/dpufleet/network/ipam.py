"""IPAM: per-DPU blocks carved from a pool, handed out by compare-and-swap on the pool's IPAMAllocation.

The record (one per pool, named after it) lists every block given out. An allocation reads it, picks the
lowest free block of each family and writes the record back with the resourceVersion it read (or creates
it, which a second creator loses with AlreadyExists): an allocator that lost the race reads again and
picks again, so no two DPUs ever hold the same block, across threads, processes and restarts (the record
is the only state). A pool with no free block left is `PoolExhausted`, which names the pool.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..api.errors import AlreadyExists, Conflict, NotFound
from ..api.kinds import DPUServiceIPAMSpec, IPAMBlock, IPAMPool
from ..store.store import Store

CAS_ATTEMPTS = 32


class PoolExhausted(Exception):
    def __init__(self, pool: str, family: str, cidr: str, blocks: int) -> None:
        super().__init__(f"pool {pool!r} is exhausted: all {blocks} {family} blocks of {cidr} are allocated")
        self.pool = pool


@dataclass(frozen=True)
class Blocks:
    """What a pool's record holds: DPU -> its block."""

    by_dpu: dict[str, IPAMBlock]
    resource_version: str | None


def read_blocks(store: Store, project: str, pool: str) -> Blocks:
    try:
        record = store.get("IPAMAllocation", pool, project)
    except NotFound:
        return Blocks({}, None)
    blocks = [IPAMBlock.model_validate(b) for b in record["spec"].get("blocks") or []]
    return Blocks({b.dpu: b for b in blocks}, record["metadata"]["resourceVersion"])


def first_free(pool: IPAMPool, taken: Iterable[str | None]) -> str | None:
    """The lowest block of the pool no one holds, or None."""
    used = {t for t in taken if t is not None}
    network = ipaddress.ip_network(pool.cidr)
    for block in network.subnets(new_prefix=pool.blockPrefixLength):
        if str(block) not in used:
            return str(block)
    return None


def _doc(project: str, pool: str, blocks: list[IPAMBlock], rv: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": pool, "project": project}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {
        "kind": "IPAMAllocation",
        "metadata": meta,
        "spec": {"pool": pool, "blocks": [b.model_dump(exclude_none=True) for b in blocks]},
    }


def _write(store: Store, project: str, pool: str, blocks: list[IPAMBlock], rv: str | None) -> bool:
    try:
        if rv is None:
            store.create(_doc(project, pool, blocks, None))
        else:
            store.update(_doc(project, pool, blocks, rv))
    except (Conflict, AlreadyExists):
        return False
    return True


def allocate(store: Store, project: str, pool: str, spec: DPUServiceIPAMSpec, dpu: str) -> IPAMBlock:
    """The DPU's block of the pool: the one it holds, else a new one (compare-and-swap, see the module doc)."""
    for _ in range(CAS_ATTEMPTS):
        current = read_blocks(store, project, pool)
        held = current.by_dpu.get(dpu)
        if held is not None:
            return held
        families: dict[str, str | None] = {}
        for family, family_pool in (("ipv4", spec.ipv4), ("ipv6", spec.ipv6)):
            if family_pool is None:
                continue
            free = first_free(family_pool, (getattr(b, family) for b in current.by_dpu.values()))
            if free is None:
                raise PoolExhausted(pool, family, family_pool.cidr, family_pool.block_count())
            families[family] = free
        block = IPAMBlock(dpu=dpu, **families)
        if _write(store, project, pool, [*current.by_dpu.values(), block], current.resource_version):
            return block
    raise Conflict(f"ipamallocation {pool!r} kept changing while allocating a block to {dpu!r}")


def release(store: Store, project: str, pool: str, keep: set[str]) -> list[str]:
    """Free the blocks of DPUs not in `keep`; the DPUs released."""
    for _ in range(CAS_ATTEMPTS):
        current = read_blocks(store, project, pool)
        gone = sorted(d for d in current.by_dpu if d not in keep)
        if not gone or current.resource_version is None:
            return []
        kept = [b for d, b in current.by_dpu.items() if d in keep]
        if _write(store, project, pool, kept, current.resource_version):
            return gone
    raise Conflict(f"ipamallocation {pool!r} kept changing while releasing blocks")


def address_in(block: str, index: int = 1) -> str:
    """The `index`-th host address of a block, with the block's prefix length (an interface's address)."""
    network = ipaddress.ip_network(block)
    return f"{network.network_address + index}/{network.prefixlen}"
