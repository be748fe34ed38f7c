"""BMC controller: crawl each BMC's Redfish tree; keep the BMC's and its DPUs' status current.

For every BMC object: open a session with it (inventory/bmcs.py: its credentials, a pooled
client), fetch the service root (reachable?),
crawl systems, managers, chassis and firmware inventory (authenticated?), then
create or refresh one DPU object per system the evidence shows to be a DPU
(inventory/recognition.py: SystemType DPU, a catalog card chassis, a catalog firmware
inventory), and the Host object of a host server the same BMC shows it in — unless
adoption is restricted to expected serial numbers. Every outcome is a condition; every
change of state an Event; nothing a BMC does (timeouts, bad JSON, refused
credentials, a serial already owned by another BMC) stops the others.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from ..api.errors import NotFound
from ..api.kinds import WORKING_PHASES
from ..api.meta import Severity, isotime, now, seconds_since
from ..api.naming import dpu_name, host_name
from ..api.selectors import LabelSelector
from ..drivers.redfish.client import AuthenticationFailed, BMCUnreachable, NotRedfish, RedfishError
from ..drivers.redfish.events import Inbox
from ..drivers.redfish.inventory import BMCInventory, SystemInfo, crawl, parse_service_root
from ..runtime.conditions import get_condition, set_condition, summarize_ready
from ..runtime.controller import Key, Mapper, Reconciler, Result, trigger_state
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..store.store import Change, Store
from ..vendors import builtin_catalog
from .bmcs import BMCAccessError, BMCSession, BMCSessions
from .recognition import RecognizedDPU, recognize
from .status import apply_crawl
from .tenancy import SerialConflict

log = logging.getLogger(__name__)

DISCOVERY_LABEL = "dpufleet.io/discovery"
BMC_STEPS = ["Reachable", "Authenticated", "Inventoried"]
# A BMC that pushes its events is crawled again at once when it reports an inventory change, so its
# periodic crawl can be rare; one that does not push is crawled every refresh_seconds. Each period
# varies by REFRESH_JITTER, so a fleet discovered together does not re-crawl in one wave.
SUBSCRIBED_REFRESH_SECONDS = 1800.0
REFRESH_JITTER = 0.2
INVENTORY_EVENTS = frozenset({"UpdateSuccessful", "ResourceAdded", "ResourceRemoved"})


class BMCReconciler(Reconciler):
    kind = "BMC"
    workers = 128
    wake_on_finalizers = False  # the event subscription's finalizer is no reason to crawl the BMC again

    def __init__(
        self,
        store: Store,
        refresh_seconds: float = 300.0,
        retry_seconds: float = 60.0,
        subscribed_refresh_seconds: float = SUBSCRIBED_REFRESH_SECONDS,
        sessions: BMCSessions | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        self.store = store
        self.sessions = sessions or BMCSessions(store)
        self.inbox = inbox or Inbox()  # pushed Redfish events (the composition root shares the server's)
        self.refresh_seconds = refresh_seconds
        self.subscribed_refresh_seconds = subscribed_refresh_seconds
        self.retry_seconds = retry_seconds
        self.events = EventRecorder(store, "bmc-controller")
        # called (in a worker thread) with each DPU a crawl wrote and whether it found firmware changed out
        # of band; the composition root (plane.py) adds the fleet's drift check here
        self.firmware_observers: list[Callable[[dict[str, Any], bool], None]] = []
        self._pushed: set[Key] = set()  # BMCs woken by a pushed inventory event, not by their period
        self._generations: dict[tuple[str, str, str], Any] = {}  # Credentials' and Discoveries' last seen
        self._crawled: dict[Key, tuple[object, ...]] = {}  # each BMC object's state at its last crawl
        self._asked: set[Key] = set()  # BMCs whose Credential or Discovery spec changed since their crawl
        self._hosts_made: set[tuple[str, str]] = set()  # Hosts a crawl created (their ADDED is no reason to crawl)

    def started(self, wake: Callable[[Key], None]) -> None:
        """A pushed event that changes what the BMC inventories (an update applied, a part added or
        removed) has the BMC crawled at once: an out-of-band update is seen (fleet/drift.py)."""

        def on_event(project: str, bmc: str, message_id: str, _severity: str) -> None:
            if message_id.rsplit(".", 1)[-1] in INVENTORY_EVENTS:
                self._pushed.add(Key(project, bmc))
                wake(Key(project, bmc))

        self.inbox.listen(on_event)

    def _refresh_after(self, bmc: dict[str, Any]) -> float:
        """Seconds between two crawls of the BMC: its own fixed share of the jitter, so that a later
        visit computes the same period."""
        subscription = (bmc.get("status") or {}).get("eventSubscription") or {}
        period = self.subscribed_refresh_seconds if subscription.get("state") == "Subscribed" else self.refresh_seconds
        share = zlib.crc32(bmc["metadata"]["name"].encode()) / 0xFFFFFFFF  # 0..1, stable per BMC
        return period * (1 - REFRESH_JITTER + 2 * REFRESH_JITTER * share)

    def _all_being_provisioned(self, bmc: dict[str, Any]) -> bool:
        """Every DPU of the BMC is being provisioned here: the update its event reports is ours, and
        provisioning records the versions it wrote (a crawl would only repeat that)."""
        names = (bmc.get("status") or {}).get("dpus") or []
        phases = []
        for name in names:
            try:
                dpu = self.store.get("DPU", name, bmc["metadata"]["project"])
            except NotFound:
                return False
            phases.append((dpu.get("status") or {}).get("phase"))
        return bool(phases) and all(phase in WORKING_PHASES for phase in phases)

    def watches(self) -> dict[str, Mapper]:
        """A changed Credential or Discovery (adoption policy) is re-applied to its BMCs at once; a new
        Host, or one pointed at another BMC, has its BMC crawled (its hardware is read for it)."""
        return {
            "Credential": self._bmcs_using_credential,
            "Discovery": self._bmcs_of_discovery,
            "Host": self._bmc_of_host,
        }

    def _bmc_of_host(self, change: Change) -> list[Key]:
        changed = self._spec_changed(change)  # first: it records the generation seen
        if change.type != "ADDED" and not changed:
            return []
        if change.type == "ADDED" and (change.project, change.name) in self._hosts_made:
            self._hosts_made.discard((change.project, change.name))
            return []  # made by a crawl of its BMC, which records its hardware too
        ref = (change.object().get("spec") or {}).get("bmcRef")
        return [Key(change.project, ref)] if ref else []

    def _spec_changed(self, change: Change) -> bool:
        """Whether the change is a new spec (generation) of an object already seen: status writes (a
        Discovery's scan progress) are no reason to crawl its BMCs, 10,000 of them at a time. The first
        sight of an object is not either: every BMC is visited when the controller starts."""
        key = (change.kind, change.project, change.name)
        if change.type == "DELETED":
            self._generations.pop(key, None)
            return False
        generation = change.object()["metadata"].get("generation")
        before = self._generations.get(key)
        self._generations[key] = generation
        return before is not None and before != generation

    def _bmcs_using_credential(self, change: Change) -> list[Key]:
        if not self._spec_changed(change):
            return []
        return self._ask(
            b
            for b in self.store.list_fields("BMC", [("spec", "credentialsRef")], change.project)
            if (b.get("spec") or {}).get("credentialsRef") == change.name
        )

    def _bmcs_of_discovery(self, change: Change) -> list[Key]:
        if not self._spec_changed(change):
            return []
        selector = LabelSelector(matchLabels={DISCOVERY_LABEL: change.name})
        return self._ask(self.store.list_fields("BMC", [("spec", "address")], change.project, selector))

    def _ask(self, bmcs: Iterable[dict[str, Any]]) -> list[Key]:
        """These BMCs are crawled at their next visit, whatever their period (a spec they use changed)."""
        keys = [Key(b["metadata"]["project"], b["metadata"]["name"]) for b in bmcs]
        self._asked.update(keys)
        return keys

    async def _event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.events.post(obj, reason, message, "Warning" if warning else "Normal")

    async def reconcile(self, key: Key) -> Result:
        try:
            bmc = await self.store.call(self.store.get, "BMC", key.name, key.project)
        except NotFound:
            self._crawled.pop(key, None)
            await self.sessions.forget(key.project, key.name)
            return Result()
        if bmc["metadata"].get("deletionTimestamp"):
            self._crawled.pop(key, None)
            return Result()
        trigger = trigger_state(bmc, self.wake_on_finalizers)
        last_seen = (bmc.get("status") or {}).get("lastSeen")  # the last crawl that succeeded
        crawled_ago = seconds_since(last_seen) if last_seen else float("inf")
        asked, pushed = key in self._asked, key in self._pushed  # a Credential's or Discovery's new spec; an event
        self._asked.discard(key)
        self._pushed.discard(key)
        remaining = max(0.0, self._refresh_after(bmc) - crawled_ago)
        if not asked and pushed and await self.store.call(self._all_being_provisioned, bmc):
            return Result(requeue_after=remaining)
        if not asked and not pushed and self._crawled.get(key) == trigger and remaining > 0:
            # nothing asks for a crawl: not the BMC object (unchanged since its last crawl), not its
            # period (its subscription may have lengthened it since), only the runtime's periodic resync
            return Result(requeue_after=remaining)
        self._crawled.pop(key, None)  # set again once this crawl succeeds
        try:
            # credentials read afresh for every crawl: one is asked for when its Credential changes
            session = await self.sessions.open(key.project, key.name, bmc=bmc, max_age=0.0, retries=2)
        except BMCAccessError as exc:
            await self._fail(bmc, "Authenticated", exc.reason, exc.message, Severity.ERROR)
            return Result(requeue_after=self.retry_seconds)
        return await self._crawl(bmc, session)

    async def _crawl(self, bmc: dict[str, Any], session: BMCSession) -> Result:
        client = session.client
        try:
            root = await client.service_root()
        except (BMCUnreachable, NotRedfish) as exc:
            await self._fail(bmc, "Reachable", exc.reason, str(exc), Severity.ERROR, reachable=False)
            return Result(requeue_after=self.retry_seconds)
        except RedfishError as exc:
            await self._fail(bmc, "Reachable", "BadServiceRoot", str(exc), Severity.ERROR, reachable=False)
            return Result(requeue_after=self.retry_seconds)
        try:
            inventory = await crawl(client, root)
        except AuthenticationFailed as exc:
            session.failed()  # every other caller reads the credentials again too
            await self._fail(
                bmc, "Authenticated", "AuthenticationFailed", str(exc), Severity.ERROR, reachable=True, root=root
            )
            return Result(requeue_after=self.retry_seconds)
        except (RedfishError, ValueError) as exc:
            await self._fail(bmc, "Inventoried", "CrawlFailed", str(exc), Severity.WARNING, reachable=True, root=root)
            return Result(requeue_after=self.retry_seconds)
        await self._apply(bmc, inventory)
        self._crawled[Key(bmc["metadata"]["project"], bmc["metadata"]["name"])] = trigger_state(
            bmc, self.wake_on_finalizers
        )
        return Result(requeue_after=self._refresh_after(bmc))

    async def _fail(
        self,
        bmc: dict[str, Any],
        step: str,
        reason: str,
        message: str,
        severity: Severity,
        reachable: bool | None = None,
        root: dict[str, Any] | None = None,
    ) -> None:
        name, project = bmc["metadata"]["name"], bmc["metadata"]["project"]
        previous = get_condition(bmc.get("status") or {}, step)
        generation = bmc["metadata"].get("generation")

        service = parse_service_root(root) if root else None

        def mutate(status: dict[str, Any]) -> None:
            if reachable is not None:
                status["reachable"] = reachable
            if service is not None:  # the anonymous service root still tells who made the BMC
                status.update(vendor=service.vendor, product=service.product)
            if reachable:
                set_condition(status, "Reachable", True, "ServiceRootAnswered", generation=generation)
            set_condition(status, step, False, reason, message, severity=severity, generation=generation)
            status["phase"] = "Unreachable" if reachable is False else "Error"
            status["observedGeneration"] = generation
            summarize_ready(status, BMC_STEPS, generation)

        await mutate_status(self.store, "BMC", name, mutate, project)
        if previous is None or previous.get("reason") != reason:
            await self._event(bmc, reason, message, warning=True)

    async def _adoptable(self, bmc: dict[str, Any], serials: list[str]) -> tuple[bool, str]:
        discovery = bmc["metadata"].get("labels", {}).get(DISCOVERY_LABEL)
        if not discovery:
            return True, "added by hand"
        try:
            disc = await self.store.call(self.store.get, "Discovery", discovery, bmc["metadata"]["project"])
        except NotFound:
            return True, "its discovery is gone"
        if disc["spec"].get("adoption", "All") != "Expected":
            return True, "discovery adopts all devices"
        expected = set(disc["spec"].get("expectedSerials") or [])
        unknown = [s for s in serials if s not in expected]
        if unknown:
            return False, f"serial {', '.join(unknown)} is not in the expected machines of discovery {discovery!r}"
        return True, "an expected machine"

    async def _apply(self, bmc: dict[str, Any], inventory: BMCInventory) -> None:
        meta = bmc["metadata"]
        name, project = meta["name"], meta["project"]
        generation = meta.get("generation")
        recognized = recognize(inventory, builtin_catalog(), f"bmc/{name}").dpus
        inventory.warnings.extend(  # a DPU with no serial cannot be named: said, not silently dropped
            f"system {d.system.odataId} is a DPU ({d.rule}) but reports no serial number; not adopted"
            for d in recognized
            if not d.system.serialNumber
        )
        dpu_systems = [r.system for r in recognized]
        serials = [s.serialNumber for s in dpu_systems if s.serialNumber]
        adopted, why = await self._adoptable(bmc, serials)
        owned: list[str] = []
        duplicates: list[str] = []
        if adopted:
            for dpu in recognized:
                if not dpu.system.serialNumber:
                    continue
                result = await self._upsert_dpu(bmc, inventory, dpu)
                if result is None:
                    duplicates.append(dpu.system.serialNumber)
                else:
                    owned.append(result)
        if adopted:
            await self._record_host_hardware(bmc, inventory, {s.odataId for s in dpu_systems})
        manager = inventory.managers[0] if inventory.managers else None
        stamp = isotime(now())
        was_adopted = (bmc.get("status") or {}).get("adopted")

        def mutate(status: dict[str, Any]) -> None:
            status.update(
                reachable=True,
                adopted=adopted,
                vendor=inventory.service.vendor,
                product=inventory.service.product,
                model=manager.model if manager else None,
                firmwareVersion=manager.firmwareVersion if manager else None,
                dpus=owned,
                serialNumbers=serials,
                warnings=inventory.warnings[:20],
                lastSeen=stamp,
                observedGeneration=generation,
            )
            set_condition(status, "Reachable", True, "ServiceRootAnswered", generation=generation)
            set_condition(status, "Authenticated", True, "CredentialsAccepted", generation=generation)
            if duplicates:
                set_condition(
                    status,
                    "Inventoried",
                    False,
                    "DuplicateSerial",
                    f"serial {', '.join(duplicates)} already belongs to a DPU managed by another BMC",
                    severity=Severity.ERROR,
                    generation=generation,
                )
            elif not dpu_systems:
                set_condition(
                    status,
                    "Inventoried",
                    True,
                    "NoDPUSystems",
                    "the BMC manages no system that the evidence shows to be a DPU (SystemType DPU, "
                    "a Card chassis or a firmware inventory of a catalog model)",
                    generation=generation,
                )
            else:
                set_condition(
                    status, "Inventoried", True, "Crawled", f"{len(dpu_systems)} DPU system(s)", generation=generation
                )
            status["phase"] = "Managed" if adopted else "Discovered"
            if not adopted:
                set_condition(
                    status, "Adopted", False, "NotExpected", why, severity=Severity.INFO, generation=generation
                )
            else:
                set_condition(status, "Adopted", True, "Adopted", why, generation=generation)
            summarize_ready(status, BMC_STEPS, generation)

        await mutate_status(self.store, "BMC", name, mutate, project)
        if was_adopted is None or was_adopted != adopted:
            await self._event(
                bmc,
                "Adopted" if adopted else "NotAdopted",
                f"{inventory.service.vendor or 'unknown vendor'} BMC with {len(dpu_systems)} DPU(s) {serials}: {why}",
                warning=not adopted,
            )
        for serial in duplicates:
            await self._event(bmc, "DuplicateSerial", f"serial {serial} is already managed through another BMC", True)

    async def _upsert_dpu(self, bmc: dict[str, Any], inventory: BMCInventory, dpu: RecognizedDPU) -> str | None:
        """Create or refresh the DPU for one Redfish system; None if its serial belongs to another BMC."""
        system = dpu.system
        assert system.serialNumber is not None
        bmc_meta = bmc["metadata"]
        project = bmc_meta["project"]
        name = dpu_name(system.serialNumber)
        part = system.partNumber
        profile = dpu.model
        host = _host_object_name(dpu.host) if dpu.host is not None else None
        stamp = isotime(now())
        try:
            existing = await self.store.call(self.store.get, "DPU", name, project)
        except NotFound:
            existing = None
        identity_labels = {
            "dpufleet.io/vendor": _label(system.manufacturer),
            "dpufleet.io/model": _label(profile.name if profile else system.model),
        }
        if existing is not None:
            owner = (existing.get("status") or {}).get("bmc")
            if owner and owner != bmc_meta["name"] and await self._bmc_exists(owner, project):
                return None
            # a DPU made first by another source (its host's agent, a user's manifest) gets the labels a
            # DPUSet selects by too; a label already there (a user's value) is never changed
            missing = {k: v for k, v in identity_labels.items() if k not in (existing["metadata"].get("labels") or {})}
            if missing:
                try:
                    existing = await self.store.call(
                        self.store.patch, "DPU", name, {"metadata": {"labels": missing}}, project
                    )
                except Exception as exc:  # a concurrent writer: the next crawl adds them
                    log.debug("label DPU %s: %s", name, exc)
        else:
            doc = {
                "kind": "DPU",
                "metadata": {
                    "name": name,
                    "project": project,
                    "labels": identity_labels,
                },
                "spec": {"serialNumber": system.serialNumber},
            }
            try:
                existing = await self.store.call(self.store.create, doc)
                await self._event(
                    existing, "Discovered", f"found through BMC {bmc_meta['name']} ({bmc['spec']['address']})"
                )
            except SerialConflict as exc:  # another project holds this serial's DPU: not this BMC's to manage
                log.warning("BMC %s: %s", bmc_meta["name"], exc.message)
                return None
            except Exception as exc:  # lost a race with another writer: use what is there
                log.debug("create DPU %s: %s", name, exc)
                existing = await self.store.call(self.store.get, "DPU", name, project)
        generation = existing["metadata"].get("generation")

        changes: list[dict[str, Any]] = []
        was_known = get_condition(existing.get("status") or {}, "ModelKnown")

        def mutate(status: dict[str, Any]) -> None:
            changes[:] = apply_crawl(
                status, bmc=bmc_meta["name"], inventory=inventory, system=system, part_number=part,
                profile=profile, stamp=stamp, generation=generation, recognition=dpu.status(),
                host=host, host_evidence=dpu.host_evidence,
            )  # fmt: skip

        updated = await mutate_status(self.store, "DPU", name, mutate, project)
        if dpu.host is not None:
            await self._upsert_host(bmc, dpu.host, name)
        known = get_condition(updated.get("status") or {}, "ModelKnown") or {}
        if known.get("reason") == "GenericModel" and (was_known or {}).get("reason") != "GenericModel":
            await self._event(updated, "GenericModel", str(known.get("message", "")), warning=True)
        out_of_band = [c for c in changes if c["source"] == "out-of-band"]
        if out_of_band:
            await self._event(
                updated,
                "FirmwareChangedOutOfBand",
                "; ".join(f"{c['component']} {c['from']} -> {c['to']}" for c in out_of_band)
                + " (not by dpufleet: pushed through the BMC or by hand)",
                warning=True,
            )
        for observe in self.firmware_observers:  # drift: adopted through the update policy, or reported
            await self.store.call(observe, updated, bool(out_of_band))
        return name

    async def _upsert_host(self, bmc: dict[str, Any], system: SystemInfo, dpu: str) -> str:
        """The Host object of a host server this BMC manages with its DPU (DMTF's SmartNIC model):
        created with the BMC as its bmcRef, and the DPU added to its DPUs."""
        project, bmc_name = bmc["metadata"]["project"], bmc["metadata"]["name"]
        name = _host_object_name(system)
        try:
            await self.store.call(self.store.get, "Host", name, project)
        except NotFound:
            spec: dict[str, Any] = {"bmcRef": bmc_name, **({"hostname": system.hostName} if system.hostName else {})}
            try:
                self._hosts_made.add((project, name))
                created = await self.store.call(
                    self.store.create, {"kind": "Host", "metadata": {"name": name, "project": project}, "spec": spec}
                )
                await self._event(created, "Discovered", f"host server {system.odataId} of BMC {bmc_name}")
            except Exception as exc:  # lost a race with another writer: the Host is there
                self._hosts_made.discard((project, name))
                log.debug("create Host %s: %s", name, exc)

        def mutate(status: dict[str, Any]) -> None:
            status["dpus"] = sorted({*(status.get("dpus") or []), dpu})
            if system.serialNumber and not status.get("serialNumber"):
                status["serialNumber"] = system.serialNumber
            status.setdefault("phase", "Discovered")

        await mutate_status(self.store, "Host", name, mutate, project)
        return name

    async def _record_host_hardware(self, bmc: dict[str, Any], inventory: BMCInventory, dpus: set[str]) -> None:
        """The hardware of the host server this BMC manages (its one system that is not a DPU), in the
        status of each Host whose spec.bmcRef names the BMC: serial, CPU model and count, memory."""
        hosts = [s for s in inventory.systems if s.odataId not in dpus]
        if len(hosts) != 1:
            return  # none, or several: which is whose is not for a guess
        system = hosts[0]
        project, bmc_name = bmc["metadata"]["project"], bmc["metadata"]["name"]
        owners = [
            h["metadata"]["name"]
            for h in await self.store.call(self.store.list_fields, "Host", [("spec", "bmcRef")], project)
            if (h.get("spec") or {}).get("bmcRef") == bmc_name
        ]
        if not owners:
            return
        # its manager: the one that names it in ManagerForServers, else the BMC's only manager
        managers = [m for m in inventory.managers if system.odataId in m.managerForServers]
        if not managers and len(inventory.managers) == 1:
            managers = list(inventory.managers)
        consoles = [c.model_dump() for c in system.consoles] + [c.model_dump() for m in managers for c in m.consoles]
        hardware = {
            "serialNumber": system.serialNumber,
            "cpuModel": system.processors.model,
            "cpuCount": system.processors.count,
            "memoryGiB": system.memoryGiB,
            "consoles": consoles,
            "virtualMedia": next((m.virtualMedia for m in managers if m.virtualMedia), None),
            "system": system.odataId,
            "bmc": bmc_name,
        }

        def mutate(status: dict[str, Any]) -> None:
            if {k: v for k, v in (status.get("hardware") or {}).items() if k != "observedAt"} != hardware:
                status["hardware"] = {**hardware, "observedAt": isotime(now())}  # written when it changes

        for host in owners:
            try:
                await mutate_status(self.store, "Host", host, mutate, project)
            except NotFound:
                continue  # deleted meanwhile

    async def _bmc_exists(self, name: str, project: str) -> bool:
        try:
            await self.store.call(self.store.get, "BMC", name, project)
        except NotFound:
            return False
        return True


def _host_object_name(system: SystemInfo) -> str:
    """A host server's Host object: named from its HostName, as its host agent names it, else its serial."""
    return host_name(system.hostName or system.serialNumber or system.id)


def _label(value: str | None) -> str:
    from ..api.naming import dns_label

    return dns_label(value or "unknown")
