"""Redfish EventService subscriptions: each BMC pushes its events to the API server.

A BMC that offers an EventService gets one subscription (EventDestination) whose Destination is
the API server's receiver (server/health_api.py, ``/health/v1/redfish-events/{project}/{bmc}``)
and whose ``Context`` authenticates what it sends: a BMC cannot carry our bearer tokens, so the
receiver accepts an event only with the Context derived for that BMC from the server's secret
key (``event_context``). Received events go to ``drivers.redfish.events`` (the inbox), where the health controller reads
them as evidence on its next visit of the BMC's DPUs, alongside what it polls.

The subscription is created once and recorded in ``status.eventSubscription`` of the BMC; every
``check_seconds`` the controller looks that it still exists and re-creates it when the BMC lost
it (a BMC reset or a factory reset drops subscriptions on many models). While one exists the BMC
carries the finalizer ``dpufleet.io/event-subscription``, so deleting the BMC object removes the
subscription from the BMC first (best effort: an unreachable BMC does not block the deletion).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from ..api.errors import Conflict, NotFound
from ..api.meta import isotime, now
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..drivers.redfish.events import Inbox
from ..images.repository import ImageRepository
from ..inventory.bmcs import BMCAccessError, BMCSessions
from ..runtime.controller import DONE, Key, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..store.store import Store

log = logging.getLogger(__name__)

FINALIZER = "dpufleet.io/event-subscription"
RECEIVER_PATH = "/health/v1/redfish-events/{project}/{bmc}"
CONTEXT_PREFIX = "dpufleet-events-"
STATUS_FIELD = "eventSubscription"


def event_context(store: Store, bmc: dict[str, Any]) -> str:
    """The Context a BMC's subscription carries and its events must echo: HMAC of the BMC's identity.

    Bound to the BMC object's uid, so a BMC deleted and registered again under the same name
    gets a new one; derived from the server's secret key, so only this control plane can mint it.
    """
    if store.secret_box is None:
        raise RuntimeError("the store has no secret key: events cannot be authenticated")
    meta = bmc["metadata"]
    key = store.secret_box.derive("redfish-event-context")
    message = f"{meta['project']}/{meta['name']}/{meta['uid']}".encode()
    return CONTEXT_PREFIX + hmac.new(key, message, "sha256").hexdigest()[:48]


def receiver_base(repository: ImageRepository | None) -> str | None:
    """Where BMCs reach the API server: the public URL (DPUFLEET_PUBLIC_URL, else the API's listen address).

    The same address BMCs fetch images from (images/repository.py); None when the controllers run
    without an API server to receive.
    """
    return repository.public_url.rstrip("/") if repository is not None and repository.public_url else None


def destination(base: str, bmc: dict[str, Any]) -> str:
    meta = bmc["metadata"]
    return base + RECEIVER_PATH.format(project=meta["project"], bmc=meta["name"])


class EventSubscriptionReconciler(Reconciler):
    kind = "BMC"
    workers = 16
    # its own finalizer (added with the subscription) is no reason to check the subscription again: that
    # second visit of every BMC was three Redfish requests each (a deletion still wakes it)
    wake_on_finalizers = False

    def __init__(
        self,
        store: Store,
        check_seconds: float = 300.0,
        retry_seconds: float = 30.0,
        base: Callable[[], str | None] | None = None,
        sessions: BMCSessions | None = None,
        inbox: Inbox | None = None,
        repository: ImageRepository | None = None,
    ) -> None:
        self.store = store
        self.sessions = sessions or BMCSessions(store)
        self.inbox = inbox or Inbox()
        self.check_seconds = check_seconds
        self.retry_seconds = retry_seconds
        self.base = base or (lambda: receiver_base(repository))
        self.events = EventRecorder(store, "health-controller")

    async def reconcile(self, key: Key) -> Result:
        try:
            bmc = await self.store.call(self.store.get, "BMC", key.name, key.project)
        except NotFound:
            return DONE
        if bmc["metadata"].get("deletionTimestamp"):
            if FINALIZER in (bmc["metadata"].get("finalizers") or []):
                await self._unsubscribe(bmc)
            return DONE
        base = self.base()
        if base is None:
            return DONE  # no receiver: nothing to subscribe to (a controller process without an API server)
        try:
            client = await self._client(bmc)
            return await self._ensure(bmc, client, destination(base, bmc))
        except (RedfishError, BMCAccessError) as exc:
            log.debug("event subscription of BMC %s: %s", key.name, exc)
            return Result(requeue_after=self.retry_seconds)

    async def _client(self, bmc: dict[str, Any]) -> RedfishClient:
        """The BMC's pooled client (inventory/bmcs.py); raises BMCAccessError when its Credential is missing."""
        meta = bmc["metadata"]
        session = await self.sessions.open(meta["project"], meta["name"], bmc=bmc, timeout=10.0, retries=1)
        return session.client

    async def _ensure(self, bmc: dict[str, Any], client: RedfishClient, dest: str) -> Result:
        recorded = ((bmc.get("status") or {}).get(STATUS_FIELD)) or {}
        root = await client.service_root()
        service_link = client.link(root, "EventService")
        service = await client.get(service_link) if service_link else None
        if service is None or service.get("ServiceEnabled") is False or not client.link(service, "Subscriptions"):
            if recorded.get("state") != "NotSupported":
                await self._record(bmc, {"state": "NotSupported", "message": "the BMC offers no EventService"})
            return Result(requeue_after=self.check_seconds * 5)
        subscriptions = client.link(service, "Subscriptions")
        assert subscriptions is not None
        uri = recorded.get("uri")
        if uri and recorded.get("destination") != dest:  # the receiver moved: the old subscription goes
            await client.request("DELETE", uri)
            uri = None
        if uri:
            status, body, _ = await client.request("GET", uri)
            if status == 200 and isinstance(body, dict) and body.get("Destination") == dest:
                await self._ensure_finalizer(bmc)
                return Result(requeue_after=self.check_seconds)
            if status not in (404, 410) and status < 500 and status != 200:
                raise RedfishError(f"GET {uri}: HTTP {status}", status)
            if status >= 500:
                raise RedfishError(f"GET {uri}: HTTP {status}", status)
        # none recorded, or the BMC lost it: adopt ours if it is there (a restart between POST and the
        # status write), else create it
        found = None
        for member in await client.members(subscriptions):
            if member.get("Destination") == dest and isinstance(member.get("@odata.id"), str):
                found = member["@odata.id"]
        context = await self.store.call(event_context, self.store, bmc)
        if found is None:
            await self._ensure_finalizer(bmc)  # before it exists: a deletion racing the POST still removes it
            _, body, headers = await client.post(
                subscriptions,
                {"Destination": dest, "Protocol": "Redfish", "Context": context, "EventFormatType": "Event"},
            )
            found = headers.get("Location") or (body or {}).get("@odata.id")
            if found and found.startswith(("http://", "https://")):
                found = "/" + found.split("/", 3)[3]
        await self._ensure_finalizer(bmc)
        self.inbox.forget(bmc["metadata"]["project"], bmc["metadata"]["name"])  # nothing from before
        lost = bool(uri)
        await self._record(bmc, {"state": "Subscribed", "uri": found, "destination": dest, "since": isotime(now())})
        if lost:
            await self._event(bmc, "EventSubscriptionRecreated", f"the BMC had lost its subscription; now {found}")
        else:
            await self._event(bmc, "EventSubscribed", f"Redfish events pushed to {dest} ({found})")
        return Result(requeue_after=self.check_seconds)

    async def _unsubscribe(self, bmc: dict[str, Any]) -> None:
        uri = ((bmc.get("status") or {}).get(STATUS_FIELD) or {}).get("uri")
        if uri:
            try:
                client = await self._client(bmc)
                status, _, _ = await client.request("DELETE", uri)
                if status >= 400 and status != 404:
                    raise RedfishError(f"DELETE {uri}: HTTP {status}", status)
            except (RedfishError, NotFound, BMCAccessError) as exc:
                await self._event(bmc, "EventSubscriptionNotRemoved", f"{uri} stays on the BMC: {exc}", warning=True)
        self.inbox.forget(bmc["metadata"]["project"], bmc["metadata"]["name"])
        await self.store.call(self._drop_finalizer, bmc["metadata"]["project"], bmc["metadata"]["name"])

    async def _record(self, bmc: dict[str, Any], value: dict[str, Any]) -> None:
        def mutate(status: dict[str, Any]) -> None:
            status[STATUS_FIELD] = {k: v for k, v in value.items() if v is not None}

        meta = bmc["metadata"]
        await mutate_status(self.store, "BMC", meta["name"], mutate, meta["project"])

    async def _ensure_finalizer(self, bmc: dict[str, Any]) -> None:
        if FINALIZER in (bmc["metadata"].get("finalizers") or []):
            return
        meta = bmc["metadata"]
        await self.store.call(self._edit_finalizers, meta["project"], meta["name"], add=True)
        bmc["metadata"].setdefault("finalizers", []).append(FINALIZER)

    def _drop_finalizer(self, project: str, name: str) -> None:
        self._edit_finalizers(project, name, add=False)

    def _edit_finalizers(self, project: str, name: str, add: bool) -> None:
        for _ in range(8):
            try:
                current = self.store.get("BMC", name, project)
            except NotFound:
                return
            finalizers = list(current["metadata"].get("finalizers") or [])
            if (FINALIZER in finalizers) == add:
                return
            if add and current["metadata"].get("deletionTimestamp"):
                return
            current["metadata"]["finalizers"] = (
                [*finalizers, FINALIZER] if add else [f for f in finalizers if f != FINALIZER]
            )
            try:
                self.store.update(current)
                return
            except Conflict:
                continue
        raise Conflict(f"bmc {name!r}: could not change its finalizers, it kept changing")

    async def _event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.events.post(obj, reason, message, "Warning" if warning else "Normal")
