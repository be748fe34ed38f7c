"""Alert rules over what the aggregator holds, on a real store, notifying a real HTTP receiver: a host whose DPUs
all go silent is one notification with every DPU in it; a DPU that speaks again resolves its alert and the
group says so; a threshold must hold for its window; a failing webhook is retried, counted, and the rule's
status says so; a rule that makes no sense is refused naming the field."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.api.errors import APIError
from dpufleet.api.telemetry import SampleRecord, TelemetryClass
from dpufleet.api.validation import validate_document
from dpufleet.crypto.secrets import SecretBox
from dpufleet.server.telemetry_alerts import AlertEvaluator, Latest
from dpufleet.store.store import Store
from support.webhook import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    built = Receiver()
    yield built
    built.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'store.db'}", SecretBox.load_or_create(tmp_path))
    yield opened
    opened.close()


def _dpu(name: str, host: str, **labels: str) -> dict[str, Any]:
    return {"kind": "DPU", "metadata": {"name": name, "project": "default", "labels": labels},
            "spec": {"serialNumber": name.removeprefix("dpu-").upper(), "hostRef": host}}  # fmt: skip


class Fleet:
    """What the aggregator would hold: per serial, the latest value of each series and when it was taken."""

    def __init__(self) -> None:
        self.latest: dict[str, Latest] = {}
        self.events: list[tuple[str, SampleRecord]] = []

    def sample(self, serial: str, metric: str, value: float, at: float, **attributes: str) -> None:
        self.latest.setdefault(serial, {})[(metric, tuple(sorted(attributes.items())))] = (value, int(at * 1000), "")

    def series(self, serial: str) -> tuple[str, Latest] | None:
        return ("default", self.latest[serial]) if serial in self.latest else None

    def emit(self, project: str, serial: str, cls: TelemetryClass, samples: list[SampleRecord]) -> None:
        assert cls == TelemetryClass.EVENTS
        self.events.extend((serial, s) for s in samples)


async def _evaluator(store: Store, fleet: Fleet, docs: list[dict[str, Any]], rule: dict[str, Any],
                     http: httpx.AsyncClient) -> AlertEvaluator:  # fmt: skip
    evaluator = AlertEvaluator(store, fleet.series, fleet.emit, http=http, retries=(0.01, 0.01))
    await evaluator.replace_dpus(docs)
    store.create({"kind": "AlertRule", "metadata": {"name": rule["name"], "project": "default"}, "spec": rule["spec"]})
    await evaluator.replace_rules(store.list("AlertRule").items)
    return evaluator


def test_a_host_gone_silent_is_one_notification_and_a_dpu_speaking_again_resolves(
    store: Store, receiver: Receiver
) -> None:
    docs = [_dpu("dpu-a1", "host-a"), _dpu("dpu-a2", "host-a"), _dpu("dpu-b1", "host-b")]
    fleet = Fleet()
    t0 = 1_000_000.0
    for serial in ("A1", "A2", "B1"):
        fleet.sample(serial, "system.cpu.time", 1.0, t0, **{"cpu.mode": "idle"})
    rule = {"name": "dpu-silent", "spec": {"metric": "system.cpu.time", "condition": "absent", "forSeconds": 5,
                                           "groupBy": "host", "groupWaitSeconds": 1, "webhook": {"url": receiver.url},
                                           "description": "no CPU sample"}}  # fmt: skip

    async def scenario() -> AlertEvaluator:
        async with httpx.AsyncClient() as http:
            evaluator = await _evaluator(store, fleet, docs, rule, http)
            await evaluator.evaluate(t0 + 1)
            fleet.sample("B1", "system.cpu.time", 2.0, t0 + 4)  # host-b keeps talking
            await evaluator.evaluate(t0 + 7)  # host-a's two DPUs silent for 7 s (> 5): both fire
            await evaluator.drain()
            assert receiver.bodies == []  # the group is still gathering (groupWaitSeconds)
            await evaluator.evaluate(t0 + 8.5)
            await evaluator.drain()
            assert len(receiver.bodies) == 1
            fleet.sample("A1", "system.cpu.time", 3.0, t0 + 9)  # one speaks again
            fleet.sample("B1", "system.cpu.time", 3.0, t0 + 9)
            await evaluator.evaluate(t0 + 9)
            await evaluator.evaluate(t0 + 10.5)
            await evaluator.drain()
            return evaluator

    evaluator = asyncio.run(scenario())
    first, second = receiver.bodies
    assert first["version"] == "4" and first["status"] == "firing"
    assert first["groupKey"] == "default/dpu-silent/host=host-a"
    assert first["groupLabels"] == {"alertname": "dpu-silent", "host": "host-a"}
    assert sorted(a["labels"]["dpu"] for a in first["alerts"]) == ["dpu-a1", "dpu-a2"]  # one message, both DPUs
    assert all(a["status"] == "firing" and a["endsAt"] == "0001-01-01T00:00:00Z" for a in first["alerts"])
    # the second says what still fires and what resolved
    states = {a["labels"]["dpu"]: a["status"] for a in second["alerts"]}
    assert states == {"dpu-a2": "firing", "dpu-a1": "resolved"} and second["status"] == "firing"
    # the rule's status shows what fires, and that the notification went through
    status = store.get("AlertRule", "dpu-silent")["status"]
    assert status["firing"] == 1 and [a["dpu"] for a in status["alerts"]] == ["dpu-a2"]
    assert status["lastNotification"]["delivered"] is True and status["lastNotification"]["alerts"] == 2
    # each transition is an event on the DPU's stream
    assert [(serial, s["attributes"]["state"]) for serial, s in fleet.events] == [
        ("A1", "firing"), ("A2", "firing"), ("A1", "resolved"),
    ]  # fmt: skip
    assert fleet.events[0][1]["severity"] == "warning" and fleet.events[2][1]["severity"] == "info"
    assert evaluator.stats.fired == 2 and evaluator.stats.resolved == 1 and evaluator.stats.notifications == 2


def test_a_threshold_must_hold_for_its_window_and_only_on_the_selected_dpus(store: Store, receiver: Receiver) -> None:
    docs = [_dpu("dpu-hot", "host-a", rack="r2"), _dpu("dpu-other", "host-b", rack="r1")]
    fleet = Fleet()
    t0 = 2_000_000.0
    rule = {"name": "soc-hot", "spec": {"metric": "hw.temperature", "match": {"hw.sensor_location": "CPU"},
                                        "dpuSelector": {"matchLabels": {"rack": "r2"}}, "threshold": 95,
                                        "forSeconds": 10, "groupWaitSeconds": 0, "severity": "critical",
                                        "webhook": {"url": receiver.url}}}  # fmt: skip

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            evaluator = await _evaluator(store, fleet, docs, rule, http)
            fleet.sample("HOT", "hw.temperature", 99.0, t0, **{"hw.sensor_location": "CPU"})
            fleet.sample(
                "HOT", "hw.temperature", 120.0, t0, **{"hw.sensor_location": "NetworkingDevice"}
            )  # not matched
            fleet.sample("OTHER", "hw.temperature", 110.0, t0, **{"hw.sensor_location": "CPU"})  # not selected
            await evaluator.evaluate(t0)
            fleet.sample("HOT", "hw.temperature", 90.0, t0 + 5, **{"hw.sensor_location": "CPU"})  # dips: starts over
            await evaluator.evaluate(t0 + 5)
            fleet.sample("HOT", "hw.temperature", 97.0, t0 + 6, **{"hw.sensor_location": "CPU"})
            await evaluator.evaluate(t0 + 6)
            await evaluator.evaluate(t0 + 15)  # 9 s above: not yet
            await evaluator.drain()
            assert receiver.bodies == []
            fleet.sample("HOT", "hw.temperature", 98.0, t0 + 16, **{"hw.sensor_location": "CPU"})
            await evaluator.evaluate(t0 + 16)  # 10 s above
            await evaluator.drain()

    asyncio.run(scenario())
    [body] = receiver.bodies
    [alert] = body["alerts"]
    assert alert["labels"]["dpu"] == "dpu-hot" and alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["value"] == "98"


def test_a_failing_webhook_is_retried_counted_and_shown_on_the_rule(store: Store, receiver: Receiver) -> None:
    receiver.status = 503
    fleet = Fleet()
    t0 = 3_000_000.0
    fleet.sample("D1", "hw.power", 200.0, t0)
    rule = {"name": "power", "spec": {"metric": "hw.power", "threshold": 150, "groupWaitSeconds": 0,
                                      "webhook": {"url": receiver.url}}}  # fmt: skip

    async def scenario() -> AlertEvaluator:
        async with httpx.AsyncClient() as http:
            evaluator = await _evaluator(store, fleet, [_dpu("dpu-d1", "host-a")], rule, http)
            await evaluator.evaluate(t0)
            await evaluator.drain()
            await evaluator.evaluate(t0 + 1)  # writes the outcome
            return evaluator

    evaluator = asyncio.run(scenario())
    assert len(receiver.bodies) == 3  # three tries
    assert evaluator.stats.notification_failures == 1 and evaluator.stats.notifications == 0
    last = store.get("AlertRule", "power")["status"]["lastNotification"]
    assert last["delivered"] is False and last["error"] == "HTTP 503"


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        ({"metric": "hw.temperature"}, "spec", "threshold: condition above needs one"),
        ({"metric": "m", "condition": "absent"}, "spec", "forSeconds: an absence is over a window"),
        ({"metric": "m", "condition": "absent", "forSeconds": 5, "threshold": 1}, "spec", "threshold: an absence"),
        ({"metric": "m", "threshold": 1, "webhook": {"url": "ftp://x"}}, "spec.webhook.url", "http:// or https://"),
        ({"metric": "m", "threshold": 1, "condition": "sideways"}, "spec.condition", "above"),
        ({"metric": "m", "threshold": 1, "groupBy": "rack"}, "spec.groupBy", "host"),
    ],
)
def test_a_rule_that_makes_no_sense_is_refused_naming_the_field(spec: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(APIError) as caught:
        validate_document({"kind": "AlertRule", "metadata": {"name": "r"}, "spec": spec})
    assert field in str(caught.value) and says in str(caught.value)


def test_a_restarted_server_takes_its_firing_alerts_back_and_resolves_them_without_notifying_twice(
    store: Store, receiver: Receiver
) -> None:
    """What fired before a restart is not notified again while it holds (an operator paged once), and one
    that clears afterwards is notified as resolved; a rule changed while the server was down starts over."""
    docs = [_dpu("dpu-a1", "host-a"), _dpu("dpu-a2", "host-a")]
    fleet = Fleet()
    t0 = 1_000_000.0
    for serial in ("A1", "A2"):
        fleet.sample(serial, "hw.temperature", 99.0, t0)
    rule = {"name": "hot", "spec": {"metric": "hw.temperature", "condition": "above", "threshold": 90,
                                    "forSeconds": 1, "groupBy": "host", "groupWaitSeconds": 0.5,
                                    "repeatSeconds": 3600, "webhook": {"url": receiver.url}}}  # fmt: skip

    async def before_the_restart() -> None:
        async with httpx.AsyncClient() as http:
            evaluator = await _evaluator(store, fleet, docs, rule, http)
            for at in (t0, t0 + 1.5, t0 + 2.5):
                await evaluator.evaluate(at)
                await evaluator.drain()

    asyncio.run(before_the_restart())
    assert [b["status"] for b in receiver.bodies] == ["firing"]
    assert store.get("AlertRule", "hot")["status"]["firing"] == 2

    async def after_the_restart() -> AlertEvaluator:
        async with httpx.AsyncClient() as http:
            evaluator = AlertEvaluator(store, fleet.series, fleet.emit, http=http, retries=(0.01, 0.01))
            await evaluator.replace_dpus(docs)
            await evaluator.replace_rules(store.list("AlertRule").items)  # a new server: the status is all it has
            for serial in ("A1", "A2"):
                fleet.sample(serial, "hw.temperature", 99.0, t0 + 10)
            for at in (t0 + 10, t0 + 12, t0 + 14):
                await evaluator.evaluate(at)
                await evaluator.drain()
            assert len(receiver.bodies) == 1, "still firing: not notified a second time"
            fleet.sample("A1", "hw.temperature", 50.0, t0 + 15)  # one cools down
            for at in (t0 + 15, t0 + 16):
                await evaluator.evaluate(at)
                await evaluator.drain()
            return evaluator

    evaluator = asyncio.run(after_the_restart())
    assert evaluator.stats.fired == 0 and evaluator.stats.resolved == 1
    second = receiver.bodies[1]
    assert {a["labels"]["dpu"]: a["status"] for a in second["alerts"]} == {"dpu-a1": "resolved", "dpu-a2": "firing"}
    status = store.get("AlertRule", "hot")["status"]
    assert status["firing"] == 1 and status["alerts"][0]["dpu"] == "dpu-a2"

    # the rule changed while the server was down: what fired under the old spec is not taken back
    store.patch("AlertRule", "hot", {"spec": {"threshold": 95}}, "default")

    async def changed() -> AlertEvaluator:
        async with httpx.AsyncClient() as http:
            evaluator = AlertEvaluator(store, fleet.series, fleet.emit, http=http, retries=(0.01, 0.01))
            await evaluator.replace_dpus(docs)
            await evaluator.replace_rules(store.list("AlertRule").items)
            return evaluator

    assert not asyncio.run(changed()).rules[("default", "hot")].alerts


def test_a_silence_keeps_its_alerts_quiet_until_it_ends_and_an_inhibiting_rule_hides_its_hosts_dpus(
    store: Store, receiver: Receiver
) -> None:
    """Maintenance on host-a: a silence for it keeps dpu-hot's alert there from the webhook (the rule's status
    still shows it, muted) and, when the silence ends with the alert still holding, it is notified. A host gone
    silent (host-silent, which inhibits dpu-hot) hides dpu-hot's alerts on that host's DPUs: one page, not two."""
    docs = [_dpu("dpu-a1", "host-a"), _dpu("dpu-b1", "host-b")]
    fleet = Fleet()
    t0 = 1_000_000.0
    fleet.sample("A1", "hw.temperature", 99.0, t0)
    fleet.sample("B1", "hw.temperature", 99.0, t0)
    fleet.sample("A1", "system.cpu.time", 1.0, t0)
    fleet.sample("B1", "system.cpu.time", 1.0, t0)
    hot = {"name": "dpu-hot", "spec": {"metric": "hw.temperature", "condition": "above", "threshold": 90,
                                       "groupBy": "dpu", "groupWaitSeconds": 0.5, "webhook": {"url": receiver.url}}}  # fmt: skip
    silent = {"metric": "system.cpu.time", "condition": "absent", "forSeconds": 5, "groupWaitSeconds": 0.5,
              "webhook": {"url": receiver.url}, "inhibits": ["dpu-hot"]}  # fmt: skip
    store.create({"kind": "AlertSilence", "metadata": {"name": "host-a-maintenance", "project": "default"},
                  "spec": {"hosts": ["host-a"], "rules": ["dpu-hot"], "startsAt": "1970-01-12T13:46:00Z",
                           "endsAt": "1970-01-12T13:46:50Z", "comment": "fan swap"}})  # fmt: skip

    def notified() -> list[tuple[str, str, str]]:
        return sorted((b["receiver"], a["labels"]["dpu"], a["status"]) for b in receiver.bodies for a in b["alerts"])

    async def scenario() -> AlertEvaluator:
        async with httpx.AsyncClient() as http:
            evaluator = await _evaluator(store, fleet, docs, hot, http)
            await evaluator.replace_silences(store.list("AlertSilence").items)
            for at in (t0, t0 + 1):
                await evaluator.evaluate(at)
                await evaluator.drain()
            # host-b is notified; host-a's alert is silenced (t0 is 13:46:40 on 1970-01-12), yet shown
            assert notified() == [("default/dpu-hot", "dpu-b1", "firing")]
            shown = {a["dpu"]: a for a in store.get("AlertRule", "dpu-hot")["status"]["alerts"]}
            assert shown["dpu-a1"]["muted"] == "silenced by alertsilence/host-a-maintenance"
            assert "muted" not in shown["dpu-b1"]
            for at in (t0 + 10, t0 + 11):  # the silence is over; the alert still holds: now it is notified
                fleet.sample("A1", "hw.temperature", 99.0, at)
                fleet.sample("B1", "hw.temperature", 99.0, at)
                fleet.sample("A1", "system.cpu.time", 1.0, at)
                fleet.sample("B1", "system.cpu.time", 1.0, at)
                await evaluator.evaluate(at)
                await evaluator.drain()
            assert ("default/dpu-hot", "dpu-a1", "firing") in notified()

            # host-b goes silent: host-silent fires there and hides dpu-hot's further notices on dpu-b1
            store.create({"kind": "AlertRule", "metadata": {"name": "host-silent", "project": "default"},
                          "spec": silent})  # fmt: skip
            await evaluator.replace_rules(store.list("AlertRule").items)
            receiver.bodies.clear()
            for at in (t0 + 12, t0 + 18, t0 + 19):
                fleet.sample("A1", "system.cpu.time", 1.0, at)
                await evaluator.evaluate(at)
                await evaluator.drain()
            assert ("default/host-silent", "dpu-b1", "firing") in notified()
            shown = {a["dpu"]: a for a in store.get("AlertRule", "dpu-hot")["status"]["alerts"]}
            assert shown["dpu-b1"]["muted"] == "inhibited by alertrule/host-silent firing on host-b"
            assert "muted" not in shown["dpu-a1"]
            return evaluator

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"endsAt": "next tuesday"}, "is not an RFC 3339 time"),
        ({"endsAt": "2026-12-07T15:00:00"}, "has no time zone"),
        ({"startsAt": "2026-12-08T00:00:00Z", "endsAt": "2026-12-07T00:00:00Z"}, "must end after it starts"),
        ({"comment": "no end"}, "endsAt"),
    ],
)
def test_a_silence_that_makes_no_sense_is_refused_naming_the_field(spec: dict[str, Any], says: str) -> None:
    with pytest.raises(APIError) as caught:
        validate_document({"kind": "AlertSilence", "metadata": {"name": "s", "project": "default"}, "spec": spec})
    assert says in str(caught.value)
