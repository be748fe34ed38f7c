"""The controller manager: runs one controller per reconciler, in the server or on its own.

In the server (the default) it shares the server's change feed. As a separate
`dpufleet controller` process it opens the same store and follows the change log
itself, so the API server and the controllers can run and restart independently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from .crypto.secrets import SecretBox
from .drivers.redfish.pool import pool as redfish_pool
from .fleet.dpuset import DPUSetReconciler
from .fleet.drift import DriftReconciler
from .fleet.power import PowerActionReconciler
from .fleet.update_request import UpdateRequestReconciler
from .health.controller import HealthReconciler
from .health.subscriptions import EventSubscriptionReconciler
from .images.repository import ImageRepository, attach_repository
from .inventory.bmc import BMCReconciler
from .inventory.discovery import DiscoveryReconciler
from .provisioning.controller import DPUProvisioner
from .runtime.controller import Controller, Reconciler
from .runtime.reaper import EventReaper
from .store.feed import ChangeFeed
from .store.store import Store, default_sqlite_url
from .tuning import tune_gc

log = logging.getLogger(__name__)

# Each entry builds one reconciler for a store; capabilities add theirs here.
ReconcilerFactory = Callable[[Store], Reconciler]


def bmc_reconciler(store: Store) -> BMCReconciler:
    """The BMC crawl, with the fleet's drift check on what each crawl finds (inventory does not know
    about rollouts; the fleet domain does)."""
    bmc = BMCReconciler(store)
    bmc.firmware_observers.append(DriftReconciler(store, bmc.events).observe)
    return bmc


DEFAULT_RECONCILERS: list[ReconcilerFactory] = [
    EventReaper,
    DiscoveryReconciler,
    bmc_reconciler,
    DPUProvisioner,
    DPUSetReconciler,
    HealthReconciler,
    EventSubscriptionReconciler,
    PowerActionReconciler,
    UpdateRequestReconciler,
]


class Manager:
    def __init__(self, store: Store, reconcilers: list[Reconciler], feed: ChangeFeed | None = None) -> None:
        self.store = store
        self.feed = feed
        self.controllers: list[Controller] = []
        self.reconcilers = reconcilers

    async def run(self) -> None:
        own_feed = self.feed is None
        feed = self.feed or ChangeFeed(self.store)
        if own_feed:
            await feed.start()
        self.controllers = [Controller(self.store, feed, r) for r in self.reconcilers]
        log.info("controllers running: %s", ", ".join(c.name for c in self.controllers) or "none")
        try:
            await asyncio.gather(*(c.run() for c in self.controllers))
        finally:
            if own_feed:
                await feed.stop()
            await redfish_pool().aclose()  # the BMC connections of this loop: nobody uses them now


def default_manager(store: Store, feed: ChangeFeed | None = None) -> Manager:
    return Manager(store, [factory(store) for factory in DEFAULT_RECONCILERS], feed)


def run_standalone(data_dir: Path, db_url: str | None) -> None:
    """`dpufleet controller`: the reconcilers as their own process against the same store."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(db_url or default_sqlite_url(data_dir), SecretBox.load_or_create(data_dir))
    attach_repository(store, ImageRepository(data_dir / "images"))
    tune_gc()
    try:
        asyncio.run(default_manager(store).run())
    finally:
        store.close()
