"""Telemetry: AlertRule, a threshold or an absence over a window, on the DPUs a selector picks, notified to a
webhook in groups (server/telemetry_alerts.py evaluates them over what the aggregator holds)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..meta import Status, Strict
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
