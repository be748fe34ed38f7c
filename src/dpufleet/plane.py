"""The composition root: which reconcilers run, what they share, and the hooks between domains.

`Services` is made once per control plane (by the API server, or by `dpufleet controller`):
the store, the image repository beside it, the inbox of Redfish events BMCs push to this
process, and the BMC sessions over the process's pooled connections. The manager hands each
reconciler class the services its constructor asks for by name (`wire`), so no module keeps
one of them in a global keyed by the store. Hooks between domains are wired here too
(`bmc_reconciler`: the fleet's drift check on what a BMC crawl finds).

`dpufleet server` runs the controllers as its child process by default (server/controllers.py
starts `dpufleet controller` and relays the pushed events to it): that process opens the same
store and follows the change log itself, so the API server and the controllers each have a core
and restart independently. In-process (`--controllers in-process`, and `Server.build` in tests)
the manager shares the server's change feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from .crypto.secrets import SecretBox
from .drivers.redfish.events import Inbox
from .drivers.redfish.pool import pool as redfish_pool
from .drivers.redfish.relay import relay_into, stdin_reader
from .fleet.dpuset import DPUSetReconciler
from .fleet.drift import DriftReconciler
from .fleet.power import PowerActionReconciler
from .fleet.update_request import UpdateRequestReconciler
from .health.actions import register_metrics as register_health_metrics
from .health.controller import HealthReconciler
from .health.subscriptions import EventSubscriptionReconciler
from .images.repository import ImageRepository
from .inventory.bmc import BMCReconciler
from .inventory.bmcs import BMCSessions
from .inventory.discovery import DiscoveryReconciler
from .inventory.tenancy import protect_serials
from .network.controller import DPUServiceChainReconciler, DPUServiceIPAMReconciler
from .provisioning.controller import DPUProvisioner
from .provisioning.metrics import register_metrics as register_provisioning_metrics
from .runtime.controller import Controller, Reconciler
from .runtime.metrics import register_metrics as register_runtime_metrics
from .runtime.reaper import EventReaper
from .services.admission import refuse_dependency_cycles
from .services.controller import DPUServiceReconciler
from .services.deployment import DPUDeploymentReconciler
from .store.feed import ChangeFeed
from .store.store import Store, default_sqlite_url
from .tuning import tune_gc

log = logging.getLogger(__name__)


class Services:
    """What the reconcilers and the API routes of one control plane share: made once, here."""

    def __init__(
        self,
        store: Store,
        repository: ImageRepository | None = None,
        *,
        inbox: Inbox | None = None,
        sessions: BMCSessions | None = None,
    ) -> None:
        self.store = store
        self.repository = repository  # None: controllers with no image repository beside them
        self.inbox = inbox or Inbox()  # Redfish events BMCs pushed to this process's API server
        self.sessions = sessions or BMCSessions(store)  # one read of a BMC's credentials, one pooled client
        protect_serials(store)  # serials are fleet-unique, whichever process creates the DPU
        refuse_dependency_cycles(store)  # a DPUService closing a dependsOn cycle is refused at admission


R = TypeVar("R", bound=Reconciler)
SHARED = ("sessions", "inbox", "repository")  # constructor parameters `wire` fills from the services


def wire(cls: type[R], services: Services, *args: Any, **kwargs: Any) -> R:
    """`cls(services.store, *args, **kwargs)`, with each shared service its constructor names by
    one of the names in SHARED (unless the caller passed its own)."""
    parameters = inspect.signature(cls).parameters
    for name in SHARED:
        if name in parameters and name not in kwargs:
            kwargs[name] = getattr(services, name)
    make: Callable[..., R] = cls  # every reconciler takes the store first
    return make(services.store, *args, **kwargs)


# Each entry builds one reconciler of a control plane: a Reconciler class (wired by `wire`) or a
# function of the services; capabilities add theirs here.
ReconcilerFactory = type[Reconciler] | Callable[[Services], Reconciler]


def build(factory: ReconcilerFactory, services: Services) -> Reconciler:
    if isinstance(factory, type):
        return wire(factory, services)
    return factory(services)


def bmc_reconciler(services: Services) -> BMCReconciler:
    """The BMC crawl, with the fleet's drift check on what each crawl finds (inventory does not know
    about rollouts; the fleet domain does)."""
    bmc = wire(BMCReconciler, services)
    bmc.firmware_observers.append(DriftReconciler(services.store, bmc.events).observe)
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
    DPUServiceReconciler,
    DPUDeploymentReconciler,
    DPUServiceIPAMReconciler,
    DPUServiceChainReconciler,
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


def default_manager(services: Services, feed: ChangeFeed | None = None) -> Manager:
    return Manager(services.store, [build(factory, services) for factory in DEFAULT_RECONCILERS], feed)


def controller_registry() -> CollectorRegistry:
    """The controllers' Prometheus metrics (runtime, provisioning, health) in a registry of their own."""
    registry = CollectorRegistry()
    register_runtime_metrics(registry)
    register_provisioning_metrics(registry)
    register_health_metrics(registry)
    return registry


async def serve_metrics(path: Path) -> asyncio.AbstractServer:
    """Answer every connection to the Unix socket `path` (mode 0600) with this process's controller
    metrics (Prometheus text), then close it: how the API server's /metrics includes them."""
    registry = controller_registry()

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await asyncio.to_thread(generate_latest, registry))
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(answer, str(path))
    os.chmod(path, 0o600)
    return server


def run_standalone(
    data_dir: Path,
    db_url: str | None,
    *,
    public_url: str | None = None,
    events_from_stdin: bool = False,
    metrics_socket: Path | None = None,
) -> None:
    """`dpufleet controller`: the reconcilers as their own process against the same store.

    `public_url` is the API server's address as BMCs reach it (image downloads, event
    subscriptions; default $DPUFLEET_PUBLIC_URL). With `events_from_stdin` the process is the API
    server's child (server/controllers.py): it adds the pushed events the server relays on stdin to
    its inbox, and stops when stdin closes or the server dies; and it answers the server's /metrics
    on `metrics_socket`. SIGTERM stops it cleanly.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(db_url or default_sqlite_url(data_dir), SecretBox.load_or_create(data_dir))
    services = Services(store, ImageRepository(data_dir / "images", public_url))
    if events_from_stdin:
        _die_with_parent()
    tune_gc()
    try:
        asyncio.run(_run_manager(services, events_from_stdin, metrics_socket))
    finally:
        store.close()


async def _run_manager(services: Services, events_from_stdin: bool, metrics_socket: Path | None) -> None:
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform / not the main thread
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    relay: asyncio.Task[int] | None = None
    if events_from_stdin:

        async def relayed() -> int:
            added = await relay_into(await stdin_reader(), services.inbox)
            log.info("stdin closed: the API server is stopping or gone (%d events relayed); stopping", added)
            main.cancel()
            return added

        relay = asyncio.create_task(relayed(), name="event-relay")
    metrics: asyncio.AbstractServer | None = None
    if metrics_socket is not None:
        try:
            metrics = await serve_metrics(metrics_socket)
        except OSError as exc:
            log.warning("cannot serve the controller metrics on %s: %s", metrics_socket, exc)
    try:
        await default_manager(services).run()
    except asyncio.CancelledError:
        log.info("controllers stopped")
    finally:
        if relay is not None:
            relay.cancel()
        if metrics is not None:
            metrics.close()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the API server that started it dies (a
    SIGKILLed server runs no code to stop it); the closed stdin is the fallback elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on stdin closing")
