"""EventService: subscriptions (EventDestination) and the Events the BMC POSTs to them.

Every SEL entry the BMC writes (power changes, faults, health changes) is also sent as
an Event (``EventType`` Alert for entries above OK, else ResourceEvent... the Event
schema deprecates EventType, so ``MessageId`` is what a client should read) to each
subscriber whose ``RegistryPrefixes`` filter admits it. Delivery is one POST per event,
retried ``DeliveryRetryAttempts`` times; a dead BMC (fault ``bmc-crash``) sends nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Any

import aiohttp

from dpufleet.sim.bmc import SimBMC, SimLogEntry, SimSubscription
from dpufleet.sim.clock import utcnow_iso
from dpufleet.sim.messages import RedfishError
from dpufleet.sim.redfish.http import ROUTER, Ctx, Json, Reply, collection, reject_unknown, status_ok
from dpufleet.sim.redfish.schema import odata_type

RETRY_ATTEMPTS = 3
RETRY_INTERVAL_SECONDS = 5
DELIVERY_TIMEOUT = 5.0
SENDER_CONNECTIONS = 32
# The fleet's event sender, one per event loop: like bmcweb's per-destination connection pool, events
# go over kept-alive connections (a client and a connection per event cost the fleet more CPU than
# the BMC work they report). aiohttp, not httpx: httpx's pool looks at every pooled connection for
# each request, which at a thousand BMCs' events was half of the emulated fleet's CPU (issue 15).
_SENDERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
REGISTRY_PREFIXES = ("ResourceEvent", "Platform", "Power", "ManagerEvent", "Update", "Base")
_event_ids = itertools.count(1)


@ROUTER.add("GET", "/EventService")
def event_service(ctx: Ctx, _: dict[str, str]) -> Json:
    return {
        "@odata.id": ctx.uri("EventService"),
        "@odata.type": odata_type("EventService"),
        "Id": "EventService",
        "Name": "Event Service",
        "ServiceEnabled": True,
        "DeliveryRetryAttempts": RETRY_ATTEMPTS,
        "DeliveryRetryIntervalSeconds": RETRY_INTERVAL_SECONDS,
        "EventFormatTypes": ["Event"],
        "RegistryPrefixes": list(REGISTRY_PREFIXES),
        "Status": status_ok(),
        "Subscriptions": ctx.link("EventService", "Subscriptions"),
    }


@ROUTER.add("GET", "/EventService/Subscriptions")
def subscriptions(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(
        ctx,
        "EventDestinationCollection",
        "Event Subscriptions",
        ("EventService", "Subscriptions"),
        list(ctx.bmc.subscriptions),
    )


def _subscription_body(ctx: Ctx, sub: SimSubscription) -> Json:
    body: Json = {
        "@odata.id": ctx.uri("EventService", "Subscriptions", sub.id),
        "@odata.type": odata_type("EventDestination"),
        "Id": sub.id,
        "Name": f"Subscription {sub.id}",
        "Destination": sub.destination,
        "Protocol": "Redfish",
        "SubscriptionType": "RedfishEvent",
        "EventFormatType": "Event",
        "Context": sub.context,
        "RegistryPrefixes": sub.registry_prefixes,
        "DeliveryRetryPolicy": "RetryForever",
        "Status": status_ok(),
    }
    return body


@ROUTER.add("GET", "/EventService/Subscriptions/{sub_id}")
def subscription(ctx: Ctx, params: dict[str, str]) -> Json:
    sub = ctx.bmc.subscriptions.get(params["sub_id"])
    if sub is None:
        raise RedfishError(404, "ResourceNotFound", "EventDestination", params["sub_id"])
    return _subscription_body(ctx, sub)


@ROUTER.add("POST", "/EventService/Subscriptions", privilege="ConfigureManager")
def subscribe(ctx: Ctx, _: dict[str, str]) -> Reply:
    body = ctx.json_body()
    reject_unknown(
        body, {"Destination", "Protocol", "Context", "RegistryPrefixes", "EventFormatType", "SubscriptionType"}
    )
    destination = body.get("Destination")
    if destination is None:
        raise RedfishError(400, "CreateFailedMissingReqProperties", "Destination")
    if not isinstance(destination, str) or not destination.startswith(("http://", "https://")):
        raise RedfishError(400, "PropertyValueTypeError", destination, "Destination")
    protocol = body.get("Protocol", "Redfish")
    if protocol != "Redfish":
        raise RedfishError(400, "PropertyValueNotInList", protocol, "Protocol")
    prefixes = body.get("RegistryPrefixes") or []
    if not isinstance(prefixes, list) or any(p not in REGISTRY_PREFIXES for p in prefixes):
        raise RedfishError(400, "PropertyValueNotInList", str(prefixes), "RegistryPrefixes")
    context = body.get("Context")
    if context is not None and not isinstance(context, str):
        raise RedfishError(400, "PropertyValueTypeError", context, "Context")
    bmc = ctx.bmc
    if any(s.destination == destination for s in bmc.subscriptions.values()):
        raise RedfishError(409, "ResourceAlreadyExists", "EventDestination", "Destination", destination)
    sub_id = str(max((int(i) for i in bmc.subscriptions), default=0) + 1)
    sub = SimSubscription(sub_id, destination, context, [str(p) for p in prefixes], utcnow_iso())
    bmc.subscriptions[sub_id] = sub
    bmc.event_sender = deliver  # the BMC publishes; this module sends
    location = ctx.uri("EventService", "Subscriptions", sub_id)
    return Reply(201, _subscription_body(ctx, sub), {"Location": location})


@ROUTER.add("DELETE", "/EventService/Subscriptions/{sub_id}", privilege="ConfigureManager")
def unsubscribe(ctx: Ctx, params: dict[str, str]) -> Reply:
    if ctx.bmc.subscriptions.pop(params["sub_id"], None) is None:
        raise RedfishError(404, "ResourceNotFound", "EventDestination", params["sub_id"])
    return Reply(204)


def event_body(bmc: SimBMC, sub: SimSubscription, entry: SimLogEntry, origin: str) -> dict[str, Any]:
    """A Redfish Event (schema Event) carrying one log entry."""
    event_id = str(next(_event_ids))
    record: dict[str, Any] = {
        "EventType": "Alert" if entry.severity != "OK" else "ResourceUpdated",
        "EventId": event_id,
        "EventTimestamp": entry.created,
        "MessageSeverity": entry.severity,
        "Message": entry.message,
        "MessageId": entry.message_id,
        "MessageArgs": entry.message_args,
        "OriginOfCondition": {"@odata.id": f"/redfish/v1/{origin}"},
        "LogEntry": {"@odata.id": f"/redfish/v1/Managers/BMC/LogServices/SEL/Entries/{entry.id}"},
    }
    body: dict[str, Any] = {
        "@odata.type": odata_type("Event"),
        "Id": event_id,
        "Name": "Event Array",
        "Events": [record],
    }
    if sub.context is not None:
        body["Context"] = sub.context
    body["Oem"] = {"dpufleet": {"bmc": bmc.id, "serialNumber": bmc.dpu.serial}}
    return body


def _sender() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    client = _SENDERS.get(loop)
    if client is None or client.closed:
        connector = aiohttp.TCPConnector(limit=SENDER_CONNECTIONS, ssl=False)
        timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT)
        client = _SENDERS[loop] = aiohttp.ClientSession(connector=connector, timeout=timeout)
    return client


async def close_senders() -> None:
    """Close this event loop's event sender (when its fleet stops)."""
    client = _SENDERS.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()


async def deliver(bmc: SimBMC, sub: SimSubscription, entry: SimLogEntry, origin: str) -> None:
    body = event_body(bmc, sub, entry, origin)
    interval = bmc.timings.scaled(RETRY_INTERVAL_SECONDS)
    for attempt in range(RETRY_ATTEMPTS + 1):
        if bmc.crashed or sub.id not in bmc.subscriptions:
            return
        try:
            async with _sender().post(sub.destination, json=body) as resp:
                await resp.read()
                if resp.status < 400:
                    sub.delivered += 1
                    bmc.events_sent += 1
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        if attempt < RETRY_ATTEMPTS:
            await asyncio.sleep(interval)
    sub.failed += 1
