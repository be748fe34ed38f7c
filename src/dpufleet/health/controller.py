"""The health controller: per DPU, gather evidence, diagnose, remediate by policy.

Each DPU is visited every `pollSeconds` (it does not wait for changes: a hung DPU changes
nothing). A visit reads the agent's and host agent's reports from the store, asks the BMC
over Redfish, diagnoses (diagnosis.py), records the `Healthy` condition and
status.diagnosis, and when the DPU is unhealthy runs the next step of its remediation
policy (policy.py). The step is recorded in status.remediation *before* it is carried out,
so a restarted controller never repeats it and rate limits are counted from the store.

Remediation never acts on a DPU that is held (spec.held) or that the provisioner is working
on, and defers disruptive steps (reboot, power-cycle, reflash) while a DPUSet selecting the
DPU already has as many unavailable DPUs as its maxUnavailable allows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..api.errors import NotFound
from ..api.kinds import WORKING_PHASES, FailureClass
from ..api.meta import Severity, isotime, now
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..drivers.redfish.events import Inbox, LogEntry
from ..inventory.bmcs import BMCAccessError, BMCSession, BMCSessions
from ..runtime.conditions import set_condition
from ..runtime.controller import Key, Mapper, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..store.store import Change, Store
from . import actions
from .config import CONDITION, HealthConfig
from .diagnosis import diagnose as run_diagnosis
from .diagnosis import diagnose_host, dpu_power_for_host, parse_time
from .evidence import BMCView, MemoryDevice, Observation
from .policy import (
    EffectivePolicy,
    RemediationState,
    select_policy,
)
from .probe import Links, agent_view, discover_links, host_view, probe_bmc, unreachable_view
from .remediation import SUBJECT, Remediator
from .subscriptions import STATUS_FIELD as SUBSCRIPTION_FIELD

log = logging.getLogger(__name__)


@dataclass
class _FullLook:
    """A BMC's memory and log entries as last read in full, and the pushed events known then."""

    at: float  # time.monotonic()
    marker: tuple[int, LogEntry | None]  # how many events the inbox held, and the newest
    memory: list[MemoryDevice]
    logs: list[LogEntry]


class HealthReconciler(Reconciler):
    kind = "DPU"
    workers = 32
    wake_on_status = False
    wake_on_spec = False  # each visit reads the spec (held, labels); a rollout's spec writes are no reason to visit

    def __init__(
        self,
        store: Store,
        config: HealthConfig | None = None,
        sessions: BMCSessions | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        self.store = store
        self.config = config or HealthConfig()
        self.inbox = inbox or Inbox()  # pushed Redfish events (the composition root shares the server's)
        self.sessions = sessions or BMCSessions(store)  # the BMC, its credentials, one pooled client per BMC
        self.events = EventRecorder(store, SUBJECT)
        self.remediator = Remediator(store, self.events)
        self._links: dict[tuple[str, str], Links] = {}
        self._full: dict[tuple[str, str], _FullLook] = {}  # (project, DPU): its BMC's last full look
        self._bmc_failures: dict[tuple[str, str], int] = {}
        # (project, host) -> DPU -> its power as evidence about the host (diagnosis.dpu_power_for_host)
        self._host_dpus: dict[tuple[str, str], dict[str, str | None]] = {}
        self._host_class: dict[tuple[str, str], FailureClass] = {}  # the host diagnosis last recorded
        self._watched: set[Key] = set()  # the DPUs visited (for the poll budget)
        self._policies: dict[str, list[dict[str, Any]]] = {}  # project -> its RemediationPolicies
        self._policy_generation = 0  # changes of RemediationPolicies seen (the cache is filled only between two)
        self._pushing: set[tuple[str, str]] = set()  # (project, DPU): its BMC pushes its events to us
        self._bmc_of: dict[tuple[str, str], str] = {}  # (project, DPU) -> its BMC, as last visited
        self._dpus_of_bmc: dict[tuple[str, str], set[str]] = {}  # (project, BMC) -> its DPUs (event wakes)

    def started(self, wake: Callable[[Key], None]) -> None:
        """A pushed event that is not OK wakes the DPUs of its BMC at once: the BMCs that push are
        polled less often (`subscribed_poll_factor`), their trouble arrives by push."""

        def on_event(project: str, bmc: str, _message_id: str, severity: str) -> None:
            if severity.upper() in ("OK", ""):
                return
            for name in list(self._dpus_of_bmc.get((project, bmc), ())):
                wake(Key(project, name))

        self.inbox.listen(on_event)

    def watches(self) -> dict[str, Mapper]:
        return {"RemediationPolicy": self._policy_changed}

    def relisted(self) -> None:
        self._policy_generation += 1
        self._policies.clear()

    def _policy_changed(self, change: Change) -> list[Key]:
        """A policy changed: each DPU's next visit reads them again (no visit sooner)."""
        self._policy_generation += 1
        self._policies.pop(change.project, None)
        return []

    def _policies_of(self, project: str) -> list[dict[str, Any]]:
        """The project's RemediationPolicies, kept until one of them changes (read in a store thread)."""
        cached = self._policies.get(project)
        if cached is not None:
            return cached
        generation = self._policy_generation
        policies = self.store.list("RemediationPolicy", project).items
        if generation == self._policy_generation:  # no change arrived while reading
            self._policies[project] = policies
        return policies

    def _read(self, key: Key) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, Any] | None]:
        """What a visit reads from the store, in one trip to a store thread: the DPU, the remediation
        policies of its project, its BMC (None when there is nothing to look at)."""
        try:
            dpu = self.store.get("DPU", key.name, key.project)
        except NotFound:
            return None, [], None
        status = dpu.get("status") or {}
        if dpu["metadata"].get("deletionTimestamp") or status.get("phase") in WORKING_PHASES:
            return dpu, [], None
        policies = self._policies_of(key.project)
        bmc = None
        if status.get("bmc"):
            try:
                bmc = self.store.get("BMC", status["bmc"], key.project)
            except NotFound:
                bmc = None
        return dpu, policies, bmc

    async def reconcile(self, key: Key) -> Result:
        dpu, policies, bmc = await self.store.call(self._read, key)
        if dpu is None or dpu["metadata"].get("deletionTimestamp"):
            self._forget(key)
            return Result()
        status = dpu.get("status") or {}
        if not status.get("bmc") and not status.get("agent"):
            return Result(
                requeue_after=self.config.poll_seconds
            )  # a record with no hardware seen yet: nothing to watch
        if status.get("phase") in WORKING_PHASES:
            # provisioning is writing, rebooting or configuring it (each wait bounded by its timeout), and
            # remediation leaves it alone meanwhile: its BMC is not polled until provisioning is done
            return Result(requeue_after=self.config.poll_seconds)
        policy = select_policy(policies, dpu["metadata"].get("labels") or {})
        config = self._config_for(policy)
        client, links, bmc_view = await self._look_at_bmc(dpu, bmc, key, config)
        # The DPU is read again after the BMC answered (or timed out) when its agents report (their
        # heartbeat's age is measured now), or before trouble is recorded or acted on (on the DPU as it
        # is now, not as it was before the visit); a healthy DPU with no agent needs no second read.
        fresh = bool(status.get("agent") or status.get("host"))
        while True:
            if fresh:
                found = await self._read_again(key)
                if found is None:
                    return Result()
                dpu = found
            observation = await self._observe(dpu, bmc_view, config)
            diagnosis = run_diagnosis(observation)
            if fresh or diagnosis.healthy:
                break
            fresh = True
        await self._record_host(dpu, observation, config)
        wait = await self.remediator.remediate(dpu, diagnosis, policy, client, links, config)
        self._watched.add(key)
        pushing = (key.project, key.name) in self._pushing and not (dpu.get("status") or {}).get("agent")
        poll = config.poll_interval(len(self._watched), pushing)
        requeue = poll if wait is None else max(0.05, min(poll, wait))
        return Result(requeue_after=requeue)

    async def _read_again(self, key: Key) -> dict[str, Any] | None:
        """The DPU as stored now; None (and forgotten) when it is gone."""
        try:
            return await self.store.call(self.store.get, "DPU", key.name, key.project)
        except NotFound:
            self._forget(key)
            return None

    async def _session(self, dpu: dict[str, Any], bmc: dict[str, Any], config: HealthConfig) -> BMCSession:
        """The DPU's BMC session: its pooled client keeps its keep-alive connections between visits.

        A changed address, TLS setting or credentialsRef of the BMC is seen at once; the credentials
        are read again every `credentials_seconds`, and at once after a failed visit.
        """
        try:
            return await self.sessions.for_dpu(
                dpu, bmc=bmc, max_age=config.credentials_seconds, timeout=config.redfish_timeout, retries=0
            )
        except BMCAccessError as exc:  # a failed look like any other: the BMC cannot be asked
            raise RedfishError(exc.message, None, exc.reason) from None

    def _bmc_changed(self, cache: tuple[str, str], bmc_name: str | None) -> None:
        """Keep the BMC -> DPUs map (for pushed events) current with the DPU's BMC seen on this visit."""
        before = self._bmc_of.get(cache)
        if before == bmc_name:
            return
        if before is not None:
            dpus = self._dpus_of_bmc.get((cache[0], before))
            if dpus is not None:
                dpus.discard(cache[1])
                if not dpus:
                    del self._dpus_of_bmc[(cache[0], before)]
            del self._bmc_of[cache]
        if bmc_name is not None:
            self._bmc_of[cache] = bmc_name
            self._dpus_of_bmc.setdefault((cache[0], bmc_name), set()).add(cache[1])

    def _forget(self, key: Key) -> None:
        self._watched.discard(key)
        self._pushing.discard((key.project, key.name))
        self._bmc_changed((key.project, key.name), None)
        for states in self._host_dpus.values():
            states.pop(key.name, None)
        self._links.pop((key.project, key.name), None)
        self._full.pop((key.project, key.name), None)
        self._bmc_failures.pop((key.project, key.name), None)
        actions.clear_alerts(key.project, key.name)
        actions.clear_quarantine(key.project, key.name)

    def _config_for(self, policy: EffectivePolicy) -> HealthConfig:
        detection = policy.spec.detection
        config = self.config
        if detection.pollSeconds is not None:
            config = replace(config, poll_seconds=detection.pollSeconds)
        if detection.heartbeatSeconds is not None:
            config = replace(config, heartbeat_seconds=detection.heartbeatSeconds)
        if detection.allowedMisses is not None:
            config = replace(config, allowed_misses=detection.allowedMisses)
        return config

    # --- evidence ---------------------------------------------------------------------------------------

    async def _look_at_bmc(
        self, dpu: dict[str, Any], bmc: dict[str, Any] | None, key: Key, config: HealthConfig
    ) -> tuple[RedfishClient | None, Links | None, BMCView | None]:
        """`bmc`: the DPU's BMC object as read with it (None: it has none, or it is gone)."""
        status = dpu.get("status") or {}
        bmc_name = status.get("bmc")
        cache = (key.project, key.name)
        self._bmc_changed(cache, bmc_name if bmc is not None else None)
        if not bmc_name:
            return None, None, None
        if bmc is None:
            await self.sessions.forget(key.project, bmc_name)
            return None, None, None
        client: RedfishClient | None = None
        try:
            session = await self._session(dpu, bmc, config)
            client = session.client
            links = self._links.get(cache)
            if links is None:
                # after a failed look the system is looked up on the BMC again (the recorded path may be stale)
                system = await session.system(rediscover=cache in self._bmc_failures)
                links = await discover_links(client, system)
                self._links[cache] = links
            pushed = self.inbox.recent(key.project, bmc_name)
            # a pushed event that reports trouble has memory and logs read in full; an OK one (a power
            # transition, an update applied: a rollout pushes four per DPU) is evidence enough by itself
            alarming = [e for e in pushed if e.severity.upper() != "OK"]
            marker = (len(alarming), alarming[-1] if alarming else None)
            last = self._full.get(cache)
            subscribed = ((bmc.get("status") or {}).get(SUBSCRIPTION_FIELD) or {}).get("state") == "Subscribed"
            if subscribed:
                self._pushing.add(cache)
            else:
                self._pushing.discard(cache)
            full = (
                not subscribed
                or last is None
                or last.marker != marker
                or time.monotonic() - last.at
                >= max(config.full_look_seconds, 6 * config.poll_interval(len(self._watched), pushing=True))
            )
            view = await probe_bmc(client, links, full=full)
        except RedfishError as exc:
            self._links.pop(cache, None)
            self._full.pop(cache, None)
            failures = self._bmc_failures.get(cache, 0) + 1
            self._bmc_failures[cache] = failures
            self.sessions.invalidate(key.project, bmc_name)  # credentials read again next time (they may have changed)
            if failures < config.bmc_failures_before_down:
                raise  # one failed poll is not yet a diagnosis: the runtime retries with backoff
            return client, None, unreachable_view(exc)
        self._bmc_failures.pop(cache, None)
        if full:
            self._full[cache] = _FullLook(time.monotonic(), marker, list(view.memory), list(view.logs))
        elif last is not None:  # nothing pushed since the last full look: its memory and logs still hold
            view.memory, view.logs = list(last.memory), list(last.logs)
        view.logs.extend(pushed)
        return client, links, view

    async def _observe(self, dpu: dict[str, Any], bmc: BMCView | None, config: HealthConfig) -> Observation:
        status = dpu.get("status") or {}
        at = now()
        silent_after = config.silent_after()
        host = None
        host_name = status.get("host") or (dpu.get("spec") or {}).get("hostRef")
        if host_name:
            try:
                host_obj = await self.store.call(self.store.get, "Host", host_name, dpu["metadata"]["project"])
                host = host_view(host_obj, dpu["metadata"]["name"], at, config.host_silent_seconds or silent_after)
            except NotFound:
                host = None
        remediation = RemediationState.model_validate(status.get("remediation") or {})
        return Observation(
            at=at,
            bmc=bmc,
            agent=agent_view(status, at, silent_after),
            host=host,
            boot_stuck_seconds=config.boot_stuck_seconds,
            log_window_seconds=config.log_window_seconds,
            disk_full_percent=config.disk_full_percent,
            max_clock_skew_seconds=config.max_clock_skew_seconds,
            agent_start_seconds=config.agent_start_seconds,
            logs_after=parse_time(remediation.logsAfter),
            # a DPU that lost power while its host agent still reports: wait until the host would count
            # as silent before calling it a power loss (a host power cycle cuts slot power too)
            power_off_grace_seconds=config.host_silent_seconds or silent_after,
        )

    # --- the host's own condition ---------------------------------------------------------------------------

    async def _record_host(self, dpu: dict[str, Any], obs: Observation, config: HealthConfig) -> None:
        """The Host's `Healthy` condition and status.diagnosis (diagnose_host), written on a change of class.

        Hosts are diagnosed from their DPUs' visits: the host agent's silence and what each DPU's BMC
        shows (a DPU that restarted while its host was quiet lost slot power with it).
        """
        host = obs.host
        if host is None or host.silent is None:
            return
        project = dpu["metadata"]["project"]
        key = (project, host.name)
        states = self._host_dpus.setdefault(key, {})
        if host.silent:
            states[dpu["metadata"]["name"]] = dpu_power_for_host(obs.bmc, host.last_seen)
        else:
            states[dpu["metadata"]["name"]] = obs.bmc.power_state if obs.bmc and obs.bmc.reachable else None
        names = sorted(states)
        found = diagnose_host(
            host.silent_seconds if host.silent else None,
            [states[n] for n in names],
            config.host_down_seconds,
            names,
        )
        if self._host_class.get(key) == found.failure_class:
            return
        stamp = isotime(now())
        previous: dict[str, Any] = {}

        def mutate(current: dict[str, Any]) -> None:
            previous.clear()
            previous.update(current.get("diagnosis") or {})
            if previous.get("failureClass") == str(found.failure_class):
                return
            current["diagnosis"] = {
                "failureClass": str(found.failure_class),
                "reason": str(found.failure_class),
                "message": found.message,
                "since": stamp,
                "checkedAt": stamp,
                "evidence": [e.model_dump() for e in found.evidence],
            }
            evidence = "; ".join(f"{e.source} {e.signal}: {e.value}" for e in found.evidence)
            if found.failure_class == FailureClass.HEALTHY:
                set_condition(current, CONDITION, True, "Healthy", found.message)
            else:
                set_condition(
                    current,
                    CONDITION,
                    False,
                    str(found.failure_class),
                    f"{found.message} [evidence: {evidence}]",
                    severity=Severity.ERROR if found.failure_class == FailureClass.HOST_DOWN else Severity.WARNING,
                )

        try:
            updated = await mutate_status(self.store, "Host", host.name, mutate, project)
        except NotFound:
            return
        self._host_class[key] = found.failure_class
        was = previous.get("failureClass")
        if was == str(found.failure_class):
            return
        if found.failure_class == FailureClass.HEALTHY:
            if was is not None:
                await self._event(updated, "Recovered", f"the host is healthy again (was {was})")
        else:
            await self._event(updated, str(found.failure_class), found.message, warning=True)

    # --- diagnosis and remediation ------------------------------------------------------------------------

    async def _event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.events.post(obj, reason, message, "Warning" if warning else "Normal")
