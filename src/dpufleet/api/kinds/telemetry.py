"""Telemetry: AlertRule, a threshold or an absence over a window, on the DPUs a selector picks, notified to a
webhook in groups (server/telemetry_alerts.py evaluates them over what the aggregator holds); AlertSilence,
a window in which the alerts it matches are not notified."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..meta import Name, Status, Strict
from ..selectors import LabelSelector
from .base import Resource
from .registry import Column, KindInfo, register


class AlertCondition(StrEnum):
    ABOVE = "above"  # the metric's value is above the threshold (for forSeconds)
    BELOW = "below"
    ABSENT = "absent"  # no sample of the metric for forSeconds


class AlertGrouping(StrEnum):
    """What one notification covers: every firing DPU of one host (a host down is one message, not one per
    DPU), each DPU alone, or the whole rule."""

    HOST = "host"
    DPU = "dpu"
    RULE = "rule"


class Webhook(Strict):
    url: str = Field(description="http(s) URL the notifications are POSTed to (Alertmanager's webhook format)")
    timeoutSeconds: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        return value.strip()


class AlertRuleSpec(Strict):
    metric: str = Field(min_length=1, max_length=200, description="a metric of the table, e.g. hw.temperature")
    match: dict[str, str] = Field(default_factory=dict, description="attributes the series must carry")
    dpuSelector: LabelSelector = Field(default_factory=LabelSelector)
    condition: AlertCondition = AlertCondition.ABOVE
    threshold: float | None = None
    forSeconds: float = Field(default=0.0, ge=0, le=86400)
    severity: Literal["info", "warning", "error", "critical"] = "warning"
    groupBy: AlertGrouping = AlertGrouping.HOST
    groupWaitSeconds: float = Field(default=2.0, ge=0, le=300, description="how long a group gathers alerts")
    repeatSeconds: float = Field(default=3600.0, ge=10, le=7 * 86400, description="re-notify a group still firing")
    webhook: Webhook | None = None
    description: str = Field(default="", max_length=1024)
    inhibits: list[Name] = Field(
        default_factory=list,
        max_length=64,
        description="rules whose alerts are not notified on the DPUs of a host where this one fires "
        "(a host gone silent hides its DPUs' own alerts)",
    )

    @model_validator(mode="after")
    def _complete(self) -> AlertRuleSpec:
        if self.condition == AlertCondition.ABSENT:
            if self.forSeconds <= 0:
                raise ValueError("forSeconds: an absence is over a window; give it in seconds (> 0)")
            if self.threshold is not None:
                raise ValueError("threshold: an absence has none")
        elif self.threshold is None:
            raise ValueError(f"threshold: condition {self.condition.value} needs one")
        return self


class AlertRule(Resource):
    kind: Literal["AlertRule"] = "AlertRule"
    spec: AlertRuleSpec
    status: Status = Field(default_factory=Status)


register(
    KindInfo(
        "AlertRule",
        "alertrules",
        AlertRule,
        ("alertrule", "alert", "alerts"),
        (
            Column("METRIC", "spec.metric"),
            Column("CONDITION", "spec.condition"),
            Column("THRESHOLD", "spec.threshold"),
            Column("FIRING", "status.firing"),
        ),
    )
)


def _instant(value: str, field: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an RFC 3339 time (2026-12-07T15:00:00Z)") from None
    if stamp.tzinfo is None:
        raise ValueError(f"{field}: {value!r} has no time zone (end it with Z or +01:00)")
    return stamp


class AlertSilenceSpec(Strict):
    """Alerts not to notify for a while (maintenance, a known fault): those of the named rules (every rule when
    none is named) on the DPUs it names, the hosts it names or the DPUs its selector picks (every DPU of the
    project when it names none), from startsAt (now when absent) until endsAt. A silenced alert still fires:
    the rule's status shows it, with `silenced`; it is notified when the silence ends and it still holds."""

    rules: list[Name] = Field(default_factory=list, max_length=64)
    dpus: list[Name] = Field(default_factory=list, max_length=1000)
    hosts: list[Name] = Field(default_factory=list, max_length=1000)
    dpuSelector: LabelSelector = Field(default_factory=LabelSelector)
    startsAt: str | None = None
    endsAt: str
    comment: str = Field(default="", max_length=1024, description="why, and who to ask")

    @model_validator(mode="after")
    def _window(self) -> AlertSilenceSpec:
        end = _instant(self.endsAt, "endsAt")
        if self.startsAt is not None and _instant(self.startsAt, "startsAt") >= end:
            raise ValueError("endsAt: the silence must end after it starts (startsAt)")
        return self

    def window(self) -> tuple[float | None, float]:
        """(starts, ends) in seconds since the epoch; starts None: from when it was made."""
        start = None if self.startsAt is None else _instant(self.startsAt, "startsAt").timestamp()
        return start, _instant(self.endsAt, "endsAt").timestamp()


class AlertSilence(Resource):
    kind: Literal["AlertSilence"] = "AlertSilence"
    spec: AlertSilenceSpec
    status: Status = Field(default_factory=Status)


register(
    KindInfo(
        "AlertSilence",
        "alertsilences",
        AlertSilence,
        ("alertsilence", "silence", "silences"),
        (
            Column("RULES", "spec.rules"),
            Column("ENDS", "spec.endsAt"),
            Column("COMMENT", "spec.comment"),
        ),
    )
)
