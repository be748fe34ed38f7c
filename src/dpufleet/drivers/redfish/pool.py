"""Pooled Redfish clients: one connection per BMC for the whole process, whoever asks.

Every controller that talks to a BMC (the inventory crawl, provisioning, health, power, event
subscriptions, the server's log fetch) gets its client here, so a BMC sees one set of keep-alive
connections and one count of requests in flight (real BMCs serve a few at a time), and the
documents read once (the service root, the UpdateService) are read once for all of them.

A connection is keyed by what it is made of -- the address, the TLS setting and the credentials --
so a credential rotation or a new address gives a new one. Each BMC (an `owner`, opaque to this
module: drivers know protocols, not the store) uses one connection at a time; when its key changes
the old connection is retired (closed once its requests in flight end) unless another owner still
uses it. Connections nobody asked for in `idle_seconds` are retired too.

aiohttp sessions belong to the event loop that made them, so there is one pool per running loop
(`pool()`): one per process in production, one per server in tests that run several.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Hashable
from dataclasses import dataclass

from .client import Credentials, RedfishClient, Transport

IDLE_SECONDS = 900.0  # longer than any caller's period (a subscribed BMC is crawled every 30 min, polled far more)
SWEEP_SECONDS = 60.0

PoolKey = tuple[str, bool, Credentials | None]


@dataclass
class _Pooled:
    client: RedfishClient
    used_at: float  # time.monotonic()


class RedfishPool:
    def __init__(self, *, idle_seconds: float = IDLE_SECONDS, max_concurrency: int = 4) -> None:
        self.idle_seconds = idle_seconds
        self.max_concurrency = max_concurrency
        self._clients: dict[PoolKey, _Pooled] = {}
        self._owners: dict[Hashable, PoolKey] = {}  # each BMC's connection now
        self._swept_at = time.monotonic()

    def __len__(self) -> int:
        return len(self._clients)

    async def client(
        self,
        owner: Hashable,
        address: str,
        credentials: Credentials | None,
        *,
        verify: bool = True,
        timeout: float = 10.0,
        retries: int = 2,
    ) -> RedfishClient:
        """The owner's client for this address and these credentials, with the caller's timeout and
        retries; closing it is not needed (and does not close the shared connection)."""
        key: PoolKey = (address.rstrip("/"), verify, credentials)
        clock = time.monotonic()
        previous = self._owners.get(owner)
        self._owners[owner] = key
        if previous is not None and previous != key:
            await self._retire_unowned(previous)
        pooled = self._clients.get(key)
        if pooled is None:
            transport = Transport(http=None, verify=verify, max_concurrency=self.max_concurrency)
            base = RedfishClient(key[0], credentials, transport=transport)
            pooled = self._clients[key] = _Pooled(base, clock)
        pooled.used_at = clock
        if clock - self._swept_at >= SWEEP_SECONDS:
            await self._sweep(clock)
        return pooled.client.with_options(timeout=timeout, retries=retries)

    async def release(self, owner: Hashable) -> None:
        """The owner is gone (its BMC deleted): its connection is retired unless another owner uses it."""
        key = self._owners.pop(owner, None)
        if key is not None:
            await self._retire_unowned(key)

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        self._owners.clear()
        for pooled in clients:
            await pooled.client.transport.retire()

    async def _retire_unowned(self, key: PoolKey) -> None:
        if key in self._owners.values():
            return
        pooled = self._clients.pop(key, None)
        if pooled is not None:
            await pooled.client.transport.retire()

    async def _sweep(self, clock: float) -> None:
        self._swept_at = clock
        idle = {key for key, pooled in self._clients.items() if clock - pooled.used_at >= self.idle_seconds}
        if not idle:
            return
        for owner in [o for o, k in self._owners.items() if k in idle]:
            del self._owners[owner]
        for key in idle:
            await self._clients.pop(key).client.transport.retire()


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedfishPool] = weakref.WeakKeyDictionary()


def pool() -> RedfishPool:
    """The pool of the running event loop (called from a coroutine)."""
    loop = asyncio.get_running_loop()
    found = _POOLS.get(loop)
    if found is None:
        found = _POOLS[loop] = RedfishPool()
    return found
