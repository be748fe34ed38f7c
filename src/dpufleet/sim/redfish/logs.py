"""Shared shapes of LogService resources: the BMC's event log and the system's POST code log."""

from __future__ import annotations

from typing import Any

from dpufleet.sim.clock import utcnow_iso
from dpufleet.sim.redfish.http import Ctx, Json, collection, status_ok
from dpufleet.sim.redfish.schema import odata_type


def log_service(ctx: Ctx, base: tuple[str, ...], name: str, entry_type: str, max_records: int, **extra: Any) -> Json:
    """A LogService at `base` (its last element is its Id) whose entries are under base/Entries."""
    return {
        "@odata.id": ctx.uri(*base),
        "@odata.type": odata_type("LogService"),
        "Id": base[-1],
        "Name": name,
        **{k: v for k, v in extra.items() if k == "Description"},
        "LogEntryType": entry_type,
        "MaxNumberOfRecords": max_records,
        "OverWritePolicy": "WrapsWhenFull",
        "ServiceEnabled": True,
        "DateTime": utcnow_iso(),
        "DateTimeLocalOffset": "+00:00",
        "Status": status_ok(),
        "Entries": ctx.link(*base, "Entries"),
        **{k: v for k, v in extra.items() if k != "Description"},
    }


def entries(ctx: Ctx, base: tuple[str, ...], name: str, members: list[Json]) -> Json:
    """A LogEntryCollection with its members embedded (auto-expanded), as BMCs serve them."""
    body = collection(ctx, "LogEntryCollection", name, (*base, "Entries"), [])
    body["Members"] = members
    body["Members@odata.count"] = len(members)
    return body
