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

import asyncio
import copy
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..api.errors import NotFound
from ..api.kinds import WORKING_PHASES, FailureClass, Phase, RemediationAction
from ..api.meta import ConditionStatus, Severity, isotime, now
from ..api.selectors import LabelSelector
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..drivers.redfish.events import LogEntry, inbox_for
from ..inventory import reports
from ..inventory.bmcs import BMCAccessError, BMCSession, BMCSessions, sessions_for
from ..runtime.conditions import get_condition, set_condition
from ..runtime.controller import Key, Mapper, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..security.audit import AuditEntry, AuditLog
from ..store.store import Change, Store
from . import actions
from .diagnosis import Diagnosis, diagnose_host, dpu_power_for_host, parse_time
from .diagnosis import diagnose as run_diagnosis
from .evidence import BMCView, MemoryDevice, Observation
from .policy import (
    DISRUPTIVE,
    HISTORY_KEPT,
    RESETS,
    EffectivePolicy,
    Episode,
    HistoryEntry,
    Plan,
    RemediationState,
    plan,
    select_policy,
)
from .probe import Links, agent_view, discover_links, host_view, probe_bmc, unreachable_view
from .subscriptions import STATUS_FIELD as SUBSCRIPTION_FIELD

log = logging.getLogger(__name__)
CONDITION = "Healthy"
SUBJECT = "health-controller"
BUSY_PHASES = frozenset({*WORKING_PHASES, Phase.AVAILABLE})


@dataclass(frozen=True)
class HealthConfig:
    poll_seconds: float = 10.0
    heartbeat_seconds: float = 10.0
    allowed_misses: int = 3
    heartbeat_write_seconds: float | None = None  # None: the report handler's throttle (inventory/reports.py)
    redfish_timeout: float = 5.0
    bmc_failures_before_down: int = 2  # consecutive failed polls before the BMC counts as down
    boot_stuck_seconds: float = 120.0
    log_window_seconds: float = 600.0
    host_silent_seconds: float | None = None  # None: as for the DPU agent
    host_down_seconds: float = 120.0  # a host silent longer than a reboot takes is HostDown
    disk_full_percent: float = 98.0
    max_clock_skew_seconds: float = 5.0
    agent_start_seconds: float = 60.0
    # An unchanged diagnosis is written again (checkedAt, the evidence's ages) at most this often: every
    # visit writing the DPU would cost a store write and a change-log entry per DPU per poll.
    refresh_seconds: float = 30.0
    credentials_seconds: float = 60.0  # a BMC's credentials are read again after this (at once after a failure)
    # A BMC that pushes its events (a live EventService subscription) is asked only for its system on most
    # polls: its log entries arrive by push, and its memory and logs are read in full when a pushed event
    # that is not OK arrives and at least this often (events delivered to another API server process, or
    # lost).
    full_look_seconds: float = 60.0
    # A budget of BMC visits a second: past max_polls_per_second x poll_seconds DPUs (1,000 with the
    # defaults), each DPU is visited less often, so that health never takes more than its share of the
    # control plane (at 10,000 DPUs, every 100 s; pushed events and agent reports still arrive at once).
    max_polls_per_second: float = 100.0
    # A BMC that pushes its events, of a DPU with no agent reporting, is visited this many times less
    # often: a pushed event that is not OK wakes its DPUs at once, so the poll only has to notice a
    # BMC that stopped answering (every 30 s with the defaults). A DPU whose agent reports keeps the
    # poll interval: the agent's silence is noticed on a visit.
    subscribed_poll_factor: float = 3.0

    def poll_interval(self, watched: int, pushing: bool = False) -> float:
        """Seconds between two visits of one DPU when `watched` DPUs are looked after; `pushing`: its BMC
        pushes its events and no agent reports from it."""
        interval = max(self.poll_seconds, watched / self.max_polls_per_second if self.max_polls_per_second else 0.0)
        return interval * max(1.0, self.subscribed_poll_factor) if pushing else interval

    def silent_after(self) -> float:
        """Seconds without a stored heartbeat before the agent counts as silent.

        The report handler stores a heartbeat at most every `heartbeat_write_seconds`, so a live
        agent's stored heartbeat can be that much plus one interval old; silence must be longer.
        """
        throttle = (
            reports.HEARTBEAT_WRITE_EVERY if self.heartbeat_write_seconds is None else self.heartbeat_write_seconds
        )
        return max(self.heartbeat_seconds * self.allowed_misses, throttle + self.heartbeat_seconds)


def _material(status: dict[str, Any]) -> tuple[Any, ...]:
    """What of the health status matters to a reader: all but checkedAt and the heartbeat's age."""
    diagnosis = dict(status.get("diagnosis") or {})
    diagnosis.pop("checkedAt", None)
    diagnosis["evidence"] = [
        e for e in diagnosis.get("evidence") or [] if not (isinstance(e, dict) and e.get("signal") == "last heartbeat")
    ]
    condition = dict(get_condition(status, CONDITION) or {})
    condition["message"] = _HEARTBEAT_AGE.sub("", str(condition.get("message", "")))
    return diagnosis, condition, status.get("remediation")


_HEARTBEAT_AGE = re.compile(r"agent last heartbeat: [^;\]]*")


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

    def __init__(self, store: Store, config: HealthConfig | None = None, sessions: BMCSessions | None = None) -> None:
        self.store = store
        self.config = config or HealthConfig()
        self.sessions = sessions or sessions_for(store)  # the BMC, its credentials, one pooled client per BMC
        self.events = EventRecorder(store, SUBJECT)
        self.audit = AuditLog(store)
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

        inbox_for(self.store).listen(on_event)

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
        dpu, policies, bmc = await asyncio.to_thread(self._read, key)
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
        wait = await self._record_and_remediate(dpu, diagnosis, policy, client, links, config)
        self._watched.add(key)
        pushing = (key.project, key.name) in self._pushing and not (dpu.get("status") or {}).get("agent")
        poll = config.poll_interval(len(self._watched), pushing)
        requeue = poll if wait is None else max(0.05, min(poll, wait))
        return Result(requeue_after=requeue)

    async def _read_again(self, key: Key) -> dict[str, Any] | None:
        """The DPU as stored now; None (and forgotten) when it is gone."""
        try:
            return await asyncio.to_thread(self.store.get, "DPU", key.name, key.project)
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
            pushed = inbox_for(self.store).recent(key.project, bmc_name)
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
                host_obj = await asyncio.to_thread(self.store.get, "Host", host_name, dpu["metadata"]["project"])
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

    async def _record_and_remediate(
        self,
        dpu: dict[str, Any],
        diagnosis: Diagnosis,
        policy: EffectivePolicy,
        client: RedfishClient | None,
        links: Links | None,
        config: HealthConfig,
    ) -> float | None:
        meta, spec, status = dpu["metadata"], dpu.get("spec") or {}, dpu.get("status") or {}
        state = RemediationState.model_validate(status.get("remediation") or {})
        state.policy = policy.name
        stamp = isotime(now())
        episode = state.episode
        opened = closed = False
        if diagnosis.transient and episode is not None:  # booting on its way back (or not): the episode goes on
            if episode.lastActionAt is not None:
                # the next step's clock starts when the DPU has finished booting from the last one:
                # escalating (say, to a power cycle) in the middle of a slow boot would only restart it
                episode.lastActionAt = stamp
            diagnosis = Diagnosis(
                FailureClass(episode.failureClass),
                f"{diagnosis.message} (still {episode.failureClass})",
                diagnosis.evidence,
            )
        if diagnosis.healthy:
            if episode is not None:
                state.history.append(
                    HistoryEntry(time=stamp, failureClass=episode.failureClass, action="recovered", result="Recovered")
                )
                state.episode = None
                state.logsAfter = stamp
                closed = True
        elif not diagnosis.transient and (episode is None or episode.failureClass != diagnosis.failure_class):
            if episode is not None:
                state.history.append(
                    HistoryEntry(
                        time=stamp,
                        failureClass=episode.failureClass,
                        action="recovered",
                        result="Superseded",
                        message=f"now {diagnosis.failure_class}",
                    )
                )
            state.episode = Episode(failureClass=str(diagnosis.failure_class), since=stamp)
            opened = True

        step_plan: Plan | None = None
        guard: str | None = None
        if state.episode is not None and not diagnosis.transient:
            steps = policy.steps(state.episode.failureClass)
            step_plan = plan(steps, state.episode, state.history, now())
            for index, step, why in step_plan.skipped:
                state.history.append(
                    HistoryEntry(
                        time=stamp,
                        failureClass=state.episode.failureClass,
                        action=step.action,
                        result="Skipped",
                        message=why,
                    )
                )
                state.episode.step = index + 1
            if step_plan.step is not None:
                guard = await self._guard(dpu, step_plan.step.action)
                if guard is None:
                    state.history.append(
                        HistoryEntry(
                            time=stamp,
                            failureClass=state.episode.failureClass,
                            action=step_plan.step.action,
                            result="Issued",
                        )
                    )
                    state.episode.step = step_plan.index + 1
                    state.episode.lastActionAt = stamp
                    if step_plan.step.action in RESETS:
                        state.logsAfter = stamp
                    if step_plan.step.action == RemediationAction.QUARANTINE:
                        state.quarantined = True
        state.history = state.history[-HISTORY_KEPT:]
        note_guard = guard is not None and state.episode is not None and guard not in state.episode.notes
        if note_guard and state.episode is not None and guard is not None:
            state.episode.notes.append(guard)
        if closed and state.quarantined and not spec.get("unschedulable"):
            state.quarantined = False  # an operator lifted the quarantine
        generation = meta.get("generation")
        previous = get_condition(status, CONDITION)

        def mutate(current: dict[str, Any]) -> None:
            since = (current.get("diagnosis") or {}).get("since")
            same = (current.get("diagnosis") or {}).get("failureClass") == str(diagnosis.failure_class)
            current["diagnosis"] = {
                "failureClass": str(diagnosis.failure_class),
                "reason": diagnosis.reason,
                "message": diagnosis.message,
                "since": since if same and since else stamp,
                "checkedAt": stamp,
                "evidence": [e.model_dump() for e in diagnosis.evidence],
            }
            current["remediation"] = state.model_dump(mode="json", exclude_none=True)
            if diagnosis.transient:
                set_condition(
                    current,
                    CONDITION,
                    ConditionStatus.UNKNOWN,
                    "Booting",
                    diagnosis.message,
                    severity=Severity.INFO,
                    generation=generation,
                )
            elif diagnosis.healthy:
                set_condition(current, CONDITION, True, "Healthy", diagnosis.message, generation=generation)
            else:
                evidence = "; ".join(f"{e.source} {e.signal}: {e.value}" for e in diagnosis.evidence)
                set_condition(
                    current,
                    CONDITION,
                    False,
                    str(diagnosis.failure_class),
                    f"{diagnosis.message} [evidence: {evidence}]",
                    severity=Severity.ERROR,
                    generation=generation,
                )

        candidate = copy.deepcopy(status)
        mutate(candidate)
        checked = parse_time((status.get("diagnosis") or {}).get("checkedAt"))
        fresh = checked is not None and (now() - checked).total_seconds() < config.refresh_seconds
        if fresh and _material(candidate) == _material(status):
            updated = dpu  # nothing a reader acts on changed: no write (see HealthConfig.refresh_seconds)
        else:
            updated = await mutate_status(self.store, "DPU", meta["name"], mutate, meta["project"])
        if opened:
            await self._event(updated, str(diagnosis.failure_class), diagnosis.message, warning=True)
            if str(diagnosis.failure_class) in actions.OUT_OF_SERVICE:
                for error in await actions.run_evacuation_hooks(updated, diagnosis):
                    await self._event(updated, "EvacuationHookFailed", error, warning=True)
        if closed:
            was = previous.get("reason") if previous else "unhealthy"
            await self._event(updated, "Recovered", f"healthy again (was {was})")
            actions.clear_alerts(meta["project"], meta["name"])
        if note_guard and guard is not None:
            await self._event(updated, "RemediationPaused", guard, warning=True)
        if step_plan is not None:
            for _index, step, why in step_plan.skipped:
                await self._event(updated, "RemediationSkipped", f"{step.action}: {why}", warning=True)
                await self._audit(updated, str(step.action), "Skipped", why)
            if step_plan.step is not None and guard is None:
                await self._act(updated, step_plan.step.action, diagnosis, client, links)
                return 0.05 if step_plan.index + 1 < len(policy.steps(str(diagnosis.failure_class))) else None
            return step_plan.wait_seconds
        return None

    async def _guard(self, dpu: dict[str, Any], action: RemediationAction) -> str | None:
        """Why remediation must not act now, or None."""
        spec, status = dpu.get("spec") or {}, dpu.get("status") or {}
        if spec.get("held"):
            return "the DPU is held (spec.held): no remediation until an operator releases it"
        phase = status.get("phase")
        if phase in BUSY_PHASES:
            return f"the provisioner is working on the DPU (phase {phase}): remediation leaves it to it"
        if action in DISRUPTIVE:
            full = await asyncio.to_thread(self._rollout_full, dpu)
            if full:
                return full
        return None

    def _rollout_full(self, dpu: dict[str, Any]) -> str | None:
        """A DPUSet selecting this DPU is at its maxUnavailable, and this DPU is not yet counted in it."""
        meta = dpu["metadata"]
        labels = meta.get("labels") or {}
        if (dpu.get("status") or {}).get("phase") in (Phase.HELD,) or str(
            (dpu.get("status") or {}).get("phase", "")
        ).endswith("Failed"):
            return None  # already counted unavailable by its DPUSet
        if ((dpu.get("status") or {}).get("diagnosis") or {}).get("failureClass") in actions.OUT_OF_SERVICE:
            return None  # out of service by its diagnosis: its DPUSet already counts it (fleet/dpuset.py)
        for dpuset in self.store.list("DPUSet", meta["project"]).items:
            selector = LabelSelector.model_validate(dpuset["spec"].get("selector") or {})
            if not selector.matches(labels):
                continue
            ds_status = dpuset.get("status") or {}
            limit = int(ds_status.get("maxUnavailable") or 0)
            if not limit:
                continue
            members = self.store.list("DPU", meta["project"], selector).items
            remediating = sum(
                1
                for d in members
                if d["metadata"]["name"] != meta["name"]
                and ((d.get("status") or {}).get("remediation") or {}).get("episode")
                and ((d.get("status") or {}).get("phase") not in BUSY_PHASES)
            )
            unavailable = int(ds_status.get("unavailable") or 0) + remediating
            if unavailable >= limit:
                return (
                    f"DPUSet {dpuset['metadata']['name']} has {unavailable} unavailable DPU(s), its maxUnavailable is "
                    f"{limit}: disruptive remediation waits"
                )
        return None

    async def _act(
        self,
        dpu: dict[str, Any],
        action: RemediationAction,
        diagnosis: Diagnosis,
        client: RedfishClient | None,
        links: Links | None,
    ) -> None:
        meta = dpu["metadata"]
        ctx = actions.ActionContext(
            self.store,
            dpu,
            client if links is not None else None,
            links.system if links else None,
            links.reset_manager if links else None,
            diagnosis,
        )
        try:
            result, message = await actions.execute(action, ctx)
        except Exception as exc:
            result, message = "Failed", f"{type(exc).__name__}: {exc}"
        stamp_issued = None

        def mutate(current: dict[str, Any]) -> None:
            nonlocal stamp_issued
            state = RemediationState.model_validate(current.get("remediation") or {})
            for entry in reversed(state.history):
                if entry.action == action and entry.result == "Issued":
                    entry.result, entry.message = result, message
                    stamp_issued = entry.time
                    break
            current["remediation"] = state.model_dump(mode="json", exclude_none=True)

        updated = await mutate_status(self.store, "DPU", meta["name"], mutate, meta["project"])
        reason = "Remediation" + "".join(part.capitalize() for part in str(action).split("-"))
        if action == RemediationAction.QUARANTINE and result == "Succeeded":
            reason = "Quarantined"
            for error in await actions.run_evacuation_hooks(updated, diagnosis):
                await self._event(updated, "EvacuationHookFailed", error, warning=True)
        await self._event(
            updated,
            reason,
            f"{action} for {diagnosis.failure_class}: {result}: {message}",
            warning=result != "Succeeded" or action in (RemediationAction.QUARANTINE, RemediationAction.ALERT),
        )
        await self._audit(updated, str(action), result, f"{diagnosis.failure_class}: {message}")

    async def _event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.events.post(obj, reason, message, "Warning" if warning else "Normal")

    async def _audit(self, dpu: dict[str, Any], action: str, result: str, detail: str) -> None:
        meta = dpu["metadata"]
        entry = AuditEntry(
            subject=SUBJECT,
            roles="controller",
            action=f"remediation:{action}",
            kind="DPU",
            project=meta["project"],
            name=meta["name"],
            result=result,
            code=200 if result in ("Succeeded", "Issued") else 409,
            source="controller",
            detail=detail[:500],
        )
        try:
            await asyncio.to_thread(self.audit.record, entry)
        except Exception:
            log.exception("could not audit %s on %s", action, meta["name"])
