"""Alert rules over the fleet's telemetry: a threshold or an absence over a window, on the DPUs a selector
picks, notified to a webhook in groups, resolved when the condition clears.

The evaluator runs beside the aggregator in the API server and reads what it already holds: the latest value
of each series per DPU (``DPUSeries.latest``), with the time it was taken. Every ``TICK_SECONDS``:

- ``above``/``below``: a DPU's alert is pending from the first look at which any of its matching series
  (the metric, carrying every attribute of ``spec.match``) is beyond the threshold, and firing once it has
  stayed so for ``forSeconds``. A value older than ``STALE_SECONDS`` is not believed (an ``absent`` rule is
  how silence is caught).
- ``absent``: firing when no matching sample has arrived for ``forSeconds``, counted from the newest one or,
  for a DPU never heard from, from when the rule first looked at it (a new rule does not fire at once).

Notifications go out per group (``groupBy``: the DPU's host, the DPU, or the whole rule): a change opens the
group's window of ``groupWaitSeconds``, and at its end one POST carries every alert of the group firing and
each resolved since. A host that goes down with its four DPUs is one message, not four. A group still firing
is notified again every ``repeatSeconds``. The body is Alertmanager's webhook format (version 4), so
receivers written for Alertmanager take it as it is. A webhook that fails is retried (three tries, backing
off) and counted; the rule's status says what the last notification did.

Each transition is also a sample of class events (``dpufleet.alert``) on the DPU's stream, and the rule's
status holds the alerts firing, with a digest of the spec they fired under. A restarted server takes them
back from there (``_restored``): an alert that still holds goes on firing without a second notification
(the next one is its group's repeat, counted from the last notification the status records), and one that
cleared while the server was down is resolved and notified as resolved. A rule whose spec changed meanwhile
starts over, as a rule changed while the server runs does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import ValidationError

from ..api.errors import NotFound
from ..api.kinds.telemetry import AlertCondition, AlertGrouping, AlertRuleSpec, AlertSilenceSpec
from ..api.telemetry import SampleRecord, TelemetryClass
from ..store.store import Store

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0
STALE_SECONDS = 300.0
MAX_ALERTS_PER_NOTIFICATION = 1000
RETRIES = (1.0, 2.0)  # the waits between the three tries of a notification
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"

# (name, attributes) -> (value, taken in ms, unit): what the aggregator keeps per DPU
Latest = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, int, str]]
Emit = Callable[[str, str, TelemetryClass, list[SampleRecord]], None]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(stamp: Any) -> float | None:
    """An RFC 3339 stamp (as `_iso` writes them) in seconds; None for anything else."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _spec_digest(spec: AlertRuleSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class DPUFacts:
    project: str
    name: str
    serial: str
    labels: dict[str, str]
    host: str
    vendor: str = ""
    model: str = ""


@dataclass
class Alert:
    dpu: DPUFacts
    pending_since: float  # time.time() the condition was first seen to hold
    value: float | None = None
    started: float | None = None  # firing since (time.time())
    notified: bool = False  # a notification carried it as firing (so its resolution is worth one too)


@dataclass
class Group:
    key: str
    label: str
    dirty_since: float | None = None
    last_sent: float | None = None
    resolved: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RuleState:
    project: str
    name: str
    spec: AlertRuleSpec
    alerts: dict[str, Alert] = field(default_factory=dict)  # DPU name -> its alert (pending or firing)
    groups: dict[str, Group] = field(default_factory=dict)
    first_looked: dict[str, float] = field(default_factory=dict)  # DPU name -> when this rule first saw it
    reported: tuple[tuple[str, float, str | None], ...] | None = None  # firing (and muted) last written
    last_notification: dict[str, Any] | None = None
    notified: bool = False  # a notification's outcome not yet written to the status
    muted: dict[str, str] = field(default_factory=dict)  # DPU name -> why its alert is not notified now


@dataclass
class AlertStats:
    evaluations: int = 0
    fired: int = 0
    resolved: int = 0
    notifications: int = 0
    notification_failures: int = 0

    def figures(self) -> dict[str, int]:
        return {"alertEvaluations": self.evaluations, "alertsFired": self.fired, "alertsResolved": self.resolved,
                "alertNotifications": self.notifications,
                "alertNotificationFailures": self.notification_failures}  # fmt: skip


def dpu_facts(doc: dict[str, Any]) -> DPUFacts:
    meta = doc.get("metadata") or {}
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    name = str(meta.get("name", ""))
    serial = str(status.get("serialNumber") or spec.get("serialNumber") or name.removeprefix("dpu-"))
    return DPUFacts(
        str(meta.get("project") or "default"), name, serial, dict(meta.get("labels") or {}),
        str(status.get("host") or spec.get("hostRef") or ""), str(status.get("vendor") or ""),
        str(status.get("model") or ""),
    )  # fmt: skip


class AlertEvaluator:
    """Evaluates the AlertRules over ``series`` (serial -> what the aggregator keeps of it: project, latest)."""

    def __init__(
        self,
        store: Store,
        series: Callable[[str], tuple[str, Latest] | None],
        emit: Emit,
        *,
        http: httpx.AsyncClient | None = None,
        retries: tuple[float, ...] = RETRIES,
    ) -> None:
        """``series``: what the aggregator holds of a serial; ``emit``: where alert events go; ``http``: the
        client notifications are sent with (by default, one of ``run``'s own)."""
        self.retries = retries
        self.store = store
        self.series = series
        self.emit = emit
        self.rules: dict[tuple[str, str], RuleState] = {}
        self.dpus: dict[tuple[str, str], DPUFacts] = {}
        self.stats = AlertStats()
        self._http = http
        self._sending: set[asyncio.Task[None]] = set()
        self._matches: dict[tuple[str, str, str], tuple[int, list[Any]]] = {}  # (serial, metric, match) -> keys
        self.silences: dict[tuple[str, str], tuple[AlertSilenceSpec, float | None, float]] = {}  # -> spec, window

    # --- what to evaluate: the DPU objects and the AlertRule objects (TelemetryPlane follows both) ----------

    async def replace_dpus(self, docs: Iterable[dict[str, Any]]) -> None:
        self.dpus = {(f.project, f.name): f for f in map(dpu_facts, docs)}
        self._matches.clear()

    async def dpu_changed(self, change: str, doc: dict[str, Any]) -> None:
        facts = dpu_facts(doc)
        if change == "DELETED":
            self.dpus.pop((facts.project, facts.name), None)
            self._matches = {k: v for k, v in self._matches.items() if k[0] != facts.serial}
        else:
            self.dpus[(facts.project, facts.name)] = facts

    async def replace_rules(self, docs: Iterable[dict[str, Any]]) -> None:
        seen = set()
        for doc in docs:
            seen.add(self._rule_changed("ADDED", doc))
        for key in set(self.rules) - seen:
            del self.rules[key]

    async def rule_changed(self, change: str, doc: dict[str, Any]) -> None:
        self._rule_changed(change, doc)

    def _rule_changed(self, change: str, doc: dict[str, Any]) -> tuple[str, str]:
        meta = doc.get("metadata") or {}
        key = (str(meta.get("project") or "default"), str(meta.get("name", "")))
        if change == "DELETED":
            self.rules.pop(key, None)
            return key
        try:
            spec = AlertRuleSpec.model_validate(doc.get("spec") or {})
        except ValidationError as exc:  # the store validated it: only an older server's document gets here
            log.warning("alert rule %s/%s ignored: %s", key[0], key[1], exc)
            self.rules.pop(key, None)
            return key
        state = self.rules.get(key)
        if state is None:
            self.rules[key] = self._restored(key, spec, doc.get("status") or {})
        elif state.spec != spec:  # a changed rule starts over (what fired under the old one is not this one's)
            self.rules[key] = RuleState(key[0], key[1], spec, groups=state.groups)
        return key

    async def replace_silences(self, docs: Iterable[dict[str, Any]]) -> None:
        self.silences = {}
        for doc in docs:
            await self.silence_changed("ADDED", doc)

    async def silence_changed(self, change: str, doc: dict[str, Any]) -> None:
        meta = doc.get("metadata") or {}
        key = (str(meta.get("project") or "default"), str(meta.get("name", "")))
        if change == "DELETED":
            self.silences.pop(key, None)
            return
        try:
            spec = AlertSilenceSpec.model_validate(doc.get("spec") or {})
        except ValidationError as exc:
            log.warning("alert silence %s/%s ignored: %s", key[0], key[1], exc)
            self.silences.pop(key, None)
            return
        start, end = spec.window()
        made = _seconds(meta.get("creationTimestamp"))
        self.silences[key] = (spec, start if start is not None else made, end)

    def _muted_by(self, rule: RuleState, alert: Alert, now: float) -> str | None:
        """Why the alert is not notified now: a silence that matches it, or a rule firing on its host that
        inhibits this one; None when it is notified."""
        facts = alert.dpu
        for (project, name), (spec, start, end) in sorted(self.silences.items()):
            if project != rule.project or not (start is None or start <= now) or now >= end:
                continue
            if spec.rules and rule.name not in spec.rules:
                continue
            named = bool(spec.dpus or spec.hosts or not spec.dpuSelector.is_empty())
            if not named or facts.name in spec.dpus or (facts.host and facts.host in spec.hosts) or (
                not spec.dpuSelector.is_empty() and spec.dpuSelector.matches(facts.labels)
            ):  # fmt: skip
                return f"silenced by alertsilence/{name}"
        for other in self.rules.values():
            if other is rule or other.project != rule.project or rule.name not in other.spec.inhibits:
                continue
            for firing in other.alerts.values():
                same = firing.dpu.host == facts.host if facts.host else firing.dpu.name == facts.name
                if firing.started is not None and same:
                    return f"inhibited by alertrule/{other.name} firing on {facts.host or facts.name}"
        return None

    def _restored(self, key: tuple[str, str], spec: AlertRuleSpec, status: dict[str, Any]) -> RuleState:
        """The rule as its status last said it stood, when that was under this spec: its firing alerts, each
        group last notified when the status says (see the module doc)."""
        rule = RuleState(key[0], key[1], spec)
        if status.get("specDigest") != _spec_digest(spec):
            return rule
        for entry in status.get("alerts") or []:
            name, since = str(entry.get("dpu") or ""), _seconds(entry.get("since"))
            if not name or since is None:
                continue
            facts = self.dpus.get((key[0], name)) or DPUFacts(
                key[0], name, str(entry.get("serial") or name.removeprefix("dpu-").upper()), {},
                str(entry.get("host") or ""),
            )  # fmt: skip
            value = entry.get("value")
            value = float(value) if isinstance(value, int | float) else None
            rule.alerts[name] = Alert(facts, since, value, since, notified=True)
        if not rule.alerts:
            return rule
        rule.reported = tuple(sorted((n, a.started, None) for n, a in rule.alerts.items() if a.started is not None))
        notified = status.get("lastNotification") if isinstance(status.get("lastNotification"), dict) else None
        rule.last_notification = notified
        last_sent = _seconds((notified or {}).get("at")) or time.time()
        for alert in rule.alerts.values():
            group_key, label = self._group_of(rule, alert.dpu)
            rule.groups.setdefault(group_key, Group(group_key, label, last_sent=last_sent))
        log.info("alert %s/%s: %d firing alert(s) taken back from its status", key[0], key[1], len(rule.alerts))
        return rule

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        async with httpx.AsyncClient() as http:
            self._http = self._http or http
            try:
                while True:
                    await self.evaluate(time.time())
                    await asyncio.sleep(TICK_SECONDS)
            finally:
                for task in list(self._sending):
                    task.cancel()

    async def drain(self) -> None:
        """Wait for the notifications being sent (and their retries)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def evaluate(self, now: float) -> None:
        self.stats.evaluations += 1
        rules = list(self.rules.values())
        for rule in rules:
            self._evaluate_rule(rule, now)
        for rule in rules:  # once every rule has looked: a rule inhibits another by what it fires
            self._mute(rule, now)
            await self._flush(rule, now)
            firing = tuple(
                sorted((n, a.started, rule.muted.get(n)) for n, a in rule.alerts.items() if a.started is not None)
            )
            if firing != rule.reported or rule.notified:
                rule.reported, rule.notified = firing, False
                await self._write_status(rule)

    def _mute(self, rule: RuleState, now: float) -> None:
        """Which firing alerts are not notified now; one no longer muted opens its group's window."""
        muted: dict[str, str] = {}
        for name, alert in rule.alerts.items():
            if alert.started is None:
                continue
            why = self._muted_by(rule, alert, now)
            if why is not None:
                muted[name] = why
            elif name in rule.muted:
                group = rule.groups.setdefault(*self._group_key(rule, alert))
                group.dirty_since = group.dirty_since if group.dirty_since is not None else now
        rule.muted = muted

    def _group_key(self, rule: RuleState, alert: Alert) -> tuple[str, Group]:
        key, label = self._group_of(rule, alert.dpu)
        return key, Group(key, label)

    def _evaluate_rule(self, rule: RuleState, now: float) -> None:
        spec = rule.spec
        selected: set[str] = set()
        for (project, name), facts in self.dpus.items():
            if project != rule.project or not spec.dpuSelector.matches(facts.labels):
                continue
            selected.add(name)
            rule.first_looked.setdefault(name, now)
            holds, value = self._holds(rule, facts, now)
            alert = rule.alerts.get(name)
            if not holds:
                if alert is not None:
                    self._resolve(rule, alert, now)
                continue
            if alert is None:
                alert = rule.alerts[name] = Alert(facts, now)
            alert.dpu, alert.value = facts, value
            window = 0.0 if spec.condition == AlertCondition.ABSENT else spec.forSeconds  # an absence is its window
            if alert.started is None and now - alert.pending_since >= window:
                alert.started = now
                self._transition(rule, alert, "firing", now)
        for name in set(rule.alerts) - selected:  # deleted, relabelled away, moved to another project
            self._resolve(rule, rule.alerts[name], now)
        for name in set(rule.first_looked) - selected:
            del rule.first_looked[name]

    def _holds(self, rule: RuleState, facts: DPUFacts, now: float) -> tuple[bool, float | None]:
        spec = rule.spec
        found = self.series(facts.serial)
        latest = found[1] if found is not None and found[0] == facts.project else {}
        readings = [latest[key] for key in self._matching(facts.serial, spec, latest) if key in latest]
        now_ms = now * 1000
        if spec.condition == AlertCondition.ABSENT:
            newest = max((taken for _, taken, _ in readings), default=0) / 1000
            since = max(newest, rule.first_looked.get(facts.name, now))
            return now - since > spec.forSeconds, (now - newest if newest else None)
        fresh = [value for value, taken, _ in readings if now_ms - taken <= STALE_SECONDS * 1000]
        if not fresh:
            return False, None
        assert spec.threshold is not None
        if spec.condition == AlertCondition.ABOVE:
            value = max(fresh)
            return value > spec.threshold, value
        value = min(fresh)
        return value < spec.threshold, value

    def _matching(self, serial: str, spec: AlertRuleSpec, latest: Latest) -> list[Any]:
        """The keys of the DPU's series the rule reads (found again only when the DPU gained series)."""
        wanted = tuple(sorted(spec.match.items()))
        cache_key = (serial, spec.metric, repr(wanted))
        cached = self._matches.get(cache_key)
        if cached is not None and cached[0] == len(latest):
            return cached[1]
        keys = [
            key for key in latest
            if key[0] == spec.metric and all(item in key[1] for item in wanted)
        ]  # fmt: skip
        self._matches[cache_key] = (len(latest), keys)
        return keys

    def _resolve(self, rule: RuleState, alert: Alert, now: float) -> None:
        del rule.alerts[alert.dpu.name]
        if alert.started is not None:
            self._transition(rule, alert, "resolved", now)

    # --- transitions: an event on the DPU's stream, the group's window opened ------------------------------

    def _group_of(self, rule: RuleState, facts: DPUFacts) -> tuple[str, str]:
        by = rule.spec.groupBy
        label = facts.host if by == AlertGrouping.HOST else facts.name if by == AlertGrouping.DPU else ""
        if by == AlertGrouping.HOST and not label:
            label = facts.name  # a DPU with no host is its own group
        return f"{rule.project}/{rule.name}/{by.value}={label}", label

    def _transition(self, rule: RuleState, alert: Alert, state: str, now: float) -> None:
        if state == "firing":
            self.stats.fired += 1
        else:
            self.stats.resolved += 1
        key, label = self._group_of(rule, alert.dpu)
        group = rule.groups.setdefault(key, Group(key, label))
        if group.dirty_since is None:
            group.dirty_since = now
        if state == "resolved" and alert.notified:  # a receiver told it fires is told it resolved
            group.resolved.append(self._alert_body(rule, alert, now))
        spec = rule.spec
        what = (
            "no sample"
            if spec.condition == AlertCondition.ABSENT
            else f"{alert.value:g}"
            if alert.value is not None
            else "-"
        )
        body = f"{rule.name} {state}: {spec.metric} {spec.condition.value}" + (
            f" {spec.threshold:g}" if spec.threshold is not None else f" for {spec.forSeconds:g}s"
        ) + f" ({what})" + (f": {spec.description}" if spec.description else "")  # fmt: skip
        sample: SampleRecord = {
            "name": "dpufleet.alert", "time": int(now * 1e9), "severity": spec.severity if state == "firing" else "info",
            "attributes": {"alertname": rule.name, "state": state, "metric": spec.metric, "host": alert.dpu.host},
            "body": body[:4096],
        }  # fmt: skip
        self.emit(rule.project, alert.dpu.serial, TelemetryClass.EVENTS, [sample])

    # --- notifications -------------------------------------------------------------------------------------

    def _alert_body(self, rule: RuleState, alert: Alert, now: float) -> dict[str, Any]:
        spec = rule.spec
        labels = {"alertname": rule.name, "project": rule.project, "dpu": alert.dpu.name, "serial": alert.dpu.serial,
                  "host": alert.dpu.host, "severity": spec.severity, "metric": spec.metric}  # fmt: skip
        resolved = alert.dpu.name not in rule.alerts or rule.alerts[alert.dpu.name] is not alert
        return {
            "status": "resolved" if resolved else "firing",
            "labels": labels,
            "annotations": {
                "description": spec.description,
                "value": "" if alert.value is None else f"{alert.value:g}",
            },
            "startsAt": _iso(alert.started or now),
            "endsAt": _iso(now) if resolved else ZERO_TIME,
            "fingerprint": hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16],
        }

    async def _flush(self, rule: RuleState, now: float) -> None:
        spec = rule.spec
        for group in list(rule.groups.values()):
            firing = [a for n, a in rule.alerts.items() if a.started is not None and n not in rule.muted
                      and self._group_of(rule, a.dpu)[0] == group.key]  # fmt: skip
            due = group.dirty_since is not None and now - group.dirty_since >= spec.groupWaitSeconds
            repeat = bool(firing) and group.last_sent is not None and now - group.last_sent >= spec.repeatSeconds
            if not (due or repeat):
                if not firing and not group.resolved and group.dirty_since is None:
                    del rule.groups[group.key]  # nothing left to say
                continue
            alerts = [self._alert_body(rule, a, now) for a in firing] + group.resolved
            group.dirty_since, group.resolved = None, []
            if not alerts:
                continue  # all muted: nothing said, so nothing to repeat
            group.last_sent = now
            for alert in firing:
                alert.notified = True
            if spec.webhook is None:
                continue
            payload = self._payload(rule, group, alerts)
            task = asyncio.get_running_loop().create_task(self._send(rule, payload))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _payload(self, rule: RuleState, group: Group, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        spec = rule.spec
        shown = alerts[:MAX_ALERTS_PER_NOTIFICATION]
        group_labels = {"alertname": rule.name}
        if spec.groupBy != AlertGrouping.RULE:
            group_labels[spec.groupBy.value] = group.label
        return {
            "version": "4",
            "groupKey": group.key,
            "truncatedAlerts": len(alerts) - len(shown),
            "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
            "receiver": f"{rule.project}/{rule.name}",
            "groupLabels": group_labels,
            "commonLabels": {
                "alertname": rule.name,
                "project": rule.project,
                "severity": spec.severity,
                "metric": spec.metric,
            },
            "commonAnnotations": {"description": spec.description},
            "externalURL": "",
            "alerts": shown,
        }

    async def _send(self, rule: RuleState, payload: dict[str, Any]) -> None:
        assert rule.spec.webhook is not None and self._http is not None
        webhook, error = rule.spec.webhook, ""
        for attempt, wait in enumerate((*self.retries, None), start=1):
            try:
                resp = await self._http.post(webhook.url, json=payload, timeout=webhook.timeoutSeconds)
                if resp.status_code < 300:
                    error = ""
                    break
                error = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            if wait is not None:
                log.info(
                    "alert %s/%s: webhook try %d failed (%s); trying again", rule.project, rule.name, attempt, error
                )
                await asyncio.sleep(wait)
        if error:
            self.stats.notification_failures += 1
            log.warning("alert %s/%s: the webhook %s failed after %d tries: %s", rule.project, rule.name,
                        webhook.url, len(self.retries) + 1, error)  # fmt: skip
        else:
            self.stats.notifications += 1
        rule.last_notification = {
            "at": _iso(time.time()), "groupKey": payload["groupKey"], "status": payload["status"],
            "alerts": len(payload["alerts"]), "delivered": not error, **({"error": error} if error else {}),
        }  # fmt: skip
        rule.notified = True

    async def _write_status(self, rule: RuleState) -> None:
        firing = sorted((a for a in rule.alerts.values() if a.started is not None), key=lambda a: a.dpu.name)
        status: dict[str, Any] = {
            "firing": len(firing),
            "specDigest": _spec_digest(rule.spec),
            "alerts": [
                {
                    "dpu": a.dpu.name,
                    "serial": a.dpu.serial,
                    "host": a.dpu.host,
                    "since": _iso(a.started or 0),
                    **({"muted": rule.muted[a.dpu.name]} if a.dpu.name in rule.muted else {}),
                    **({"value": a.value} if a.value is not None else {}),
                }
                for a in firing[:MAX_ALERTS_PER_NOTIFICATION]
            ],
        }
        if rule.last_notification is not None:
            status["lastNotification"] = rule.last_notification
        try:
            await asyncio.to_thread(self.store.update_status, "AlertRule", rule.name, status, rule.project)
        except NotFound:
            pass  # deleted meanwhile: the feed says so next
        except Exception as exc:  # a busy store: written again at the next change
            log.warning("alert %s/%s: status not written: %s", rule.project, rule.name, exc)
            rule.reported = None
