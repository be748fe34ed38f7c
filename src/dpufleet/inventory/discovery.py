"""Discovery controller: scan for Redfish services (and mDNS adverts); every BMC found becomes a BMC object.

A scan runs when a Discovery is created or changed and then every
`intervalSeconds`. It is idempotent: a restarted control plane simply scans
again. BMC objects it creates carry the label dpufleet.io/discovery=<name>, so
the BMC controller can apply the discovery's adoption policy once it has read
the serial numbers (which needs credentials, which the scan does not use).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from ..api.errors import AlreadyExists, NotFound
from ..api.meta import Severity, isotime, now
from ..api.naming import bmc_name
from ..drivers.discovery.scan import ProbeOutcome, ProbeResult, scan, scan_targets
from ..runtime.conditions import set_condition, summarize_ready
from ..runtime.controller import Key, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..store.store import Store
from .bmc import DISCOVERY_LABEL

log = logging.getLogger(__name__)
PROGRESS_EVERY = 2.0
MAX_ERRORS_KEPT = 20


def _parse_time(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


class DiscoveryReconciler(Reconciler):
    kind = "Discovery"
    workers = 2

    def __init__(self, store: Store) -> None:
        self.store = store
        self.events = EventRecorder(store, "discovery-controller")

    async def reconcile(self, key: Key) -> Result:
        try:
            disc = await self.store.call(self.store.get, "Discovery", key.name, key.project)
        except NotFound:
            return Result()
        if disc["metadata"].get("deletionTimestamp"):
            return Result()
        spec, status = disc["spec"], disc.get("status") or {}
        interval = float(spec.get("intervalSeconds", 600))
        last = _parse_time(status.get("lastScanFinished"))
        changed = status.get("observedGeneration") != disc["metadata"].get("generation")
        if last is not None and not changed:
            due_in = interval - (now() - last).total_seconds()
            if due_in > 0:
                return Result(requeue_after=due_in)
        await self._scan(disc)
        return Result(requeue_after=interval)

    async def _scan(self, disc: dict[str, Any]) -> None:
        meta, spec = disc["metadata"], disc["spec"]
        name, project, generation = meta["name"], meta["project"], meta.get("generation")
        counts = {o: 0 for o in ProbeOutcome}
        errors: list[str] = []
        created: list[str] = []
        started = isotime(now())
        last_progress = time.monotonic()

        def progress(status: dict[str, Any]) -> None:
            status.update(
                phase="Scanning",
                lastScanStarted=started,
                probed=sum(counts.values()),
                redfishFound=counts[ProbeOutcome.REDFISH],
                unreachable=counts[ProbeOutcome.UNREACHABLE],
                notRedfish=counts[ProbeOutcome.NOT_REDFISH] + counts[ProbeOutcome.ERROR],
            )

        await mutate_status(self.store, "Discovery", name, progress, project)

        async def on_result(result: ProbeResult) -> None:
            nonlocal last_progress
            counts[result.outcome] += 1
            if result.outcome == ProbeOutcome.REDFISH:
                if await self._ensure_bmc(disc, result):
                    created.append(result.url)
            elif result.outcome in (ProbeOutcome.ERROR, ProbeOutcome.NOT_REDFISH) and len(errors) < MAX_ERRORS_KEPT:
                errors.append(f"{result.url}: {result.detail}")
            elif (
                result.outcome == ProbeOutcome.UNREACHABLE
                and result.url in (spec.get("endpoints") or [])
                and len(errors) < MAX_ERRORS_KEPT
            ):
                errors.append(f"{result.url}: {result.detail}")  # a named endpoint that is down is worth saying
            if time.monotonic() - last_progress > PROGRESS_EVERY:
                last_progress = time.monotonic()
                await mutate_status(self.store, "Discovery", name, progress, project)

        targets = scan_targets(
            spec.get("endpoints") or [],
            spec.get("cidrs") or [],
            spec.get("ports") or [443],
            [str(s) for s in spec.get("schemes") or ["https"]],
        )
        if spec.get("mdns"):
            from ..drivers.discovery.mdns import browse

            found = await browse(spec.get("mdnsInterfaces") or None)
            counts_agents = len(found.agents)
            targets = _chain(targets, found.redfish)
        else:
            counts_agents = 0
        await scan(
            targets,
            concurrency=int(spec.get("concurrency", 128)),
            timeout=float(spec.get("probeTimeoutSeconds", 5.0)),
            verify=bool(spec.get("verifyTLS", False)),
            on_result=on_result,
        )

        def finish(status: dict[str, Any]) -> None:
            progress(status)
            status.update(
                phase="Idle",
                lastScanFinished=isotime(now()),
                agentsFound=counts_agents,
                errors=errors,
                observedGeneration=generation,
            )
            if counts[ProbeOutcome.REDFISH] == 0 and sum(counts.values()) > 0:
                set_condition(
                    status,
                    "Scanned",
                    False,
                    "NothingFound",
                    f"probed {sum(counts.values())} endpoints, none answered as Redfish",
                    severity=Severity.WARNING,
                    generation=generation,
                )
            else:
                set_condition(
                    status,
                    "Scanned",
                    True,
                    "ScanSucceeded",
                    f"{counts[ProbeOutcome.REDFISH]} Redfish service(s) among {sum(counts.values())} endpoints",
                    generation=generation,
                )
            summarize_ready(status, ["Scanned"], generation)

        await mutate_status(self.store, "Discovery", name, finish, project)
        await self.store.call(
            self.events.record,
            disc,
            "ScanFinished",
            f"probed {sum(counts.values())}: {counts[ProbeOutcome.REDFISH]} Redfish ({len(created)} new), "
            f"{counts[ProbeOutcome.UNREACHABLE]} unreachable, "
            f"{counts[ProbeOutcome.NOT_REDFISH] + counts[ProbeOutcome.ERROR]} not Redfish",
        )

    async def _ensure_bmc(self, disc: dict[str, Any], result: ProbeResult) -> bool:
        """Create the BMC object for a Redfish service unless it exists. True if created."""
        meta, spec = disc["metadata"], disc["spec"]
        doc: dict[str, Any] = {
            "kind": "BMC",
            "metadata": {
                "name": bmc_name(result.url),
                "project": meta["project"],
                "labels": {DISCOVERY_LABEL: meta["name"]},
            },
            "spec": {"address": result.url, "verifyTLS": bool(spec.get("verifyTLS", False))},
        }
        if spec.get("credentialsRef"):
            doc["spec"]["credentialsRef"] = spec["credentialsRef"]
        try:
            await self.store.call(self.store.create, doc)
        except AlreadyExists:
            return False
        return True


def _chain(first: Any, extra: list[str]) -> Any:
    yield from first
    yield from extra
