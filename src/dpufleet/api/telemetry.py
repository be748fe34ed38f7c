"""Telemetry on the wire: classes, samples, the batches agents publish on the fleet bus, and what the
control plane asks each DPU to collect.

Metric names and units follow the OpenTelemetry semantic conventions (system.* for the OS, hw.* for
hardware); docs/guide/telemetry.md holds the table. A batch holds the samples of one class from one
collection, so the agent can buffer, trim and forward whole batches by class.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

SUBJECT_ROOT = "dpufleet.tm"
CLASSES_ANNOTATION = "telemetry.dpufleet.io/classes"  # on a DPU: the classes its agent collects, comma-separated
INTERVAL_ANNOTATION = "telemetry.dpufleet.io/interval-seconds"
# the least severity of log line sent, by source: "warning" (every source), "syslog=error,flow-logger=debug"
LOG_SEVERITY_ANNOTATION = "telemetry.dpufleet.io/log-severity"


class TelemetryClass(StrEnum):
    LOGS = "logs"
    ENVIRONMENTAL = "environmental"
    LOAD = "load"
    ERRORS = "errors"
    USAGE = "usage"
    EVENTS = "events"


# Trimming drops the first of these first: events (and alerts) are the last to go, usage (billing) just before.
DROP_ORDER: tuple[TelemetryClass, ...] = (
    TelemetryClass.LOAD,
    TelemetryClass.LOGS,
    TelemetryClass.ENVIRONMENTAL,
    TelemetryClass.ERRORS,
    TelemetryClass.USAGE,
    TelemetryClass.EVENTS,
)

# Prometheus names: dots become underscores and the unit a suffix, as OpenTelemetry's Prometheus exporter does
UNIT_SUFFIX = {
    "By": "_bytes", "s": "_seconds", "Cel": "_celsius", "1": "_ratio", "W": "_watts", "V": "_volts",
    "A": "_amperes", "J": "_joules",
}  # fmt: skip


def prom_name(name: str, unit: str) -> str:
    """The Prometheus name of a metric (the fleet endpoint and each agent's use the same)."""
    base = name.replace(".", "_").replace("-", "_")
    suffix = UNIT_SUFFIX.get(unit, "")
    return base if not suffix or base.endswith(suffix) else base + suffix


# Counters (monotonic, cumulative since boot); every other measurement is a gauge
CUMULATIVE_METRICS = frozenset(
    {
        "system.cpu.time",
        "system.network.io",
        "system.network.packets",
        "system.network.errors",
        "system.network.dropped",
        "container.cpu.time",
        "dpufleet.service.restarts",
        "dpufleet.dataplane.port.io",
        "dpufleet.dataplane.port.packets",
        "dpufleet.dataplane.port.errors",
        "dpufleet.dataplane.port.dropped",
        "dpufleet.dataplane.chain.io",
        "dpufleet.dataplane.chain.packets",
    }
)

SEVERITIES: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")


def severity_rank(severity: str | None) -> int:
    """Where a severity stands (a sample without one ranks as info)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else 1


def parse_classes(text: str) -> list[TelemetryClass]:
    """A comma-separated list of classes, in their declared order; ValueError naming an unknown one."""
    wanted: set[TelemetryClass] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            wanted.add(TelemetryClass(part))
        except ValueError:
            known = ", ".join(c.value for c in TelemetryClass)
            raise ValueError(f"unknown telemetry class {part!r} (known: {known})") from None
    return [c for c in TelemetryClass if c in wanted]


def parse_log_severity(text: str) -> dict[str, str]:
    """``warning`` or ``syslog=error,my-service=debug`` (a bare severity is every source's, key ``*``);
    ValueError naming the bad entry."""
    found: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        source, sep, severity = part.rpartition("=")
        source = source.strip() if sep else "*"
        severity = severity.strip()
        if severity not in SEVERITIES:
            raise ValueError(f"log severity {part!r}: {severity!r} is not one of {', '.join(SEVERITIES)}")
        if not source:
            raise ValueError(f"log severity {part!r}: no source before '='")
        found[source] = severity
    return found


def check_annotations(annotations: dict[str, str]) -> None:
    """The telemetry annotations of an object, checked when it is written; ValueError naming the bad one."""
    for key, parse in (
        (CLASSES_ANNOTATION, parse_classes),
        (LOG_SEVERITY_ANNOTATION, parse_log_severity),
        (INTERVAL_ANNOTATION, _interval),
    ):
        if key in annotations:
            try:
                parse(annotations[key])
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= seconds <= 86400:
        raise ValueError(f"{seconds:g} s is outside 0.1 to 86400 seconds")
    return seconds


def subject(project: str, serial: str, cls: TelemetryClass | str) -> str:
    """The bus subject one DPU publishes a class under: dpufleet.tm.<project>.<serial>.<class>."""
    return f"{SUBJECT_ROOT}.{project}.{serial}.{cls}"


class Sample(BaseModel):
    """One measurement or one event. ``time`` is when it was taken (Unix nanoseconds, the DPU's clock)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    unit: str = Field(default="", max_length=32)
    value: float = 0.0
    time: int
    attributes: dict[str, str] = Field(default_factory=dict)
    severity: str | None = None
    body: str | None = Field(default=None, max_length=4096)


class Batch(BaseModel):
    """The samples of one class from one collection on one DPU; ``seq`` rises by one per batch."""

    model_config = ConfigDict(extra="forbid")

    serial: str
    seq: int = Field(ge=0)
    cls: TelemetryClass = Field(alias="class")
    samples: list[Sample]


@with_config(ConfigDict(extra="forbid"))
class SampleRecord(TypedDict):
    """A sample as the aggregator takes it in: the same fields and limits as ``Sample``, validated into a plain
    dict (no model object per sample: the aggregator takes in hundreds of thousands a second). Fields an
    agent left out are absent; read them with their defaults (unit "", value 0.0, attributes {})."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    unit: NotRequired[Annotated[str, Field(max_length=32)]]
    value: NotRequired[float]
    time: int
    attributes: NotRequired[dict[str, str]]
    severity: NotRequired[str | None]
    body: NotRequired[Annotated[str | None, Field(max_length=4096)]]


@with_config(ConfigDict(extra="forbid"))
class FrameRecord(TypedDict):
    """The measurements of one collection in columns: one value per series of the batch's series table
    ``table`` (its line after the first, from 0), all taken at ``time``."""

    time: Annotated[int, Field(ge=0)]
    table: Annotated[int, Field(ge=0)]
    values: list[float]


BatchRecord = TypedDict(  # functional form: "class" is a keyword
    "BatchRecord",
    {
        "serial": str,
        "seq": Annotated[int, Field(ge=0)],
        "class": TelemetryClass,
        "samples": list[SampleRecord],
        "frames": NotRequired[list[FrameRecord]],
    },
)
BatchRecord.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
_BATCH = TypeAdapter(BatchRecord)

# One series of a table: its metric name, unit and attributes (the same limits as a Sample's).
SeriesEntry = tuple[
    Annotated[str, Field(min_length=1, max_length=200)], Annotated[str, Field(max_length=32)], dict[str, str]
]
_TABLE = TypeAdapter(list[SeriesEntry])
MAX_TABLES = 64  # series tables in one batch (one per collection time: an agent sends one or two)
LINE = b"\n"  # compact JSON never holds a raw newline, so the lines of a batch split on it safely


class BatchError(ValueError):
    """A batch that is not one: ``str()`` names the part and the problem."""


def parse_batch(data: bytes) -> tuple[BatchRecord, list[bytes]]:
    """One batch off the bus: its first line validated as ``Batch`` is (pydantic.ValidationError if it is not
    one), and the series tables its frames refer to, unparsed (``parse_table`` reads one; a reader that has
    seen the same bytes before reuses what it read). A batch of one line (no frames) is the older form."""
    head, _, rest = data.partition(LINE)
    batch = _BATCH.validate_json(head)
    tables = rest.split(LINE) if rest else []
    if len(tables) > MAX_TABLES:
        raise BatchError(f"series tables: {len(tables)} in one batch (at most {MAX_TABLES})")
    for index, frame in enumerate(batch.get("frames") or ()):
        if frame["table"] >= len(tables):
            raise BatchError(
                f"frames[{index}].table: {frame['table']} names no series table (the batch has {len(tables)})"
            )
    return batch, tables


def parse_table(line: bytes) -> list[SeriesEntry]:
    """One series table: a JSON list of [name, unit, attributes] (pydantic.ValidationError if it is not)."""
    return _TABLE.validate_json(line)


def encode_batch(serial: str, seq: int, cls: TelemetryClass, samples: list[dict[str, Any]]) -> bytes:
    """A batch as agents publish it. Measurements (no body, no severity) go in frames, one per collection
    time: a list of values against a series table (name, unit, attributes per value) on a line of its own,
    which repeats byte for byte from one collection to the next while the DPU's series stay the same, so the
    aggregator reads a table once and then only the values. Log lines and events stay whole samples."""
    whole: list[dict[str, Any]] = []
    by_time: dict[int, tuple[list[list[Any]], list[float]]] = {}
    for sample in samples:
        if sample.get("body") is not None or sample.get("severity") is not None:
            whole.append(sample)
            continue
        table, values = by_time.setdefault(sample["time"], ([], []))
        table.append([sample["name"], sample.get("unit", ""), sample.get("attributes") or {}])
        values.append(float(sample.get("value", 0.0)))
    head: dict[str, Any] = {"serial": serial, "seq": seq, "class": cls.value, "samples": whole}
    lines: list[bytes] = []
    if by_time:
        head["frames"] = [{"time": t, "table": i, "values": v} for i, (t, (_, v)) in enumerate(by_time.items())]
        lines = [orjson.dumps(table) for table, _ in by_time.values()]
    return LINE.join([orjson.dumps(head), *lines])


class Accounting(BaseModel):
    """Every sample an agent produced, by class: delivered to the bus, dropped (by reason), or buffered."""

    serial: str
    produced: dict[str, int] = Field(default_factory=dict)
    delivered: dict[str, int] = Field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = Field(default_factory=dict)  # reason -> class -> samples
    buffered: dict[str, int] = Field(default_factory=dict)  # on the DPU and on its host
    bufferedBytes: int = 0  # on the DPU
    bufferedOnHost: dict[str, int] = Field(default_factory=dict)  # the share of `buffered` its host keeps
    bufferedOnHostBytes: int = 0


class BusAccess(BaseModel):
    """How an agent reaches the fleet bus: its URL and this DPU's own credentials."""

    url: str
    user: str
    password: str
    subjectPrefix: str  # dpufleet.tm.<project>.<serial>: the only subjects this DPU may publish under


class TelemetryAssignment(BaseModel):
    """What the control plane asks a DPU's agent to collect and where to send it (in the report reply)."""

    classes: list[TelemetryClass] = Field(default_factory=list)
    intervalSeconds: float = Field(default=10.0, gt=0)
    logSeverity: dict[str, str] = Field(default_factory=dict)  # source ("syslog", a service, "*") -> least sent
    # a service -> the classes its instances are reported under (its DPUService's classes annotation); a service
    # not named here is reported under every class the DPU asks for
    serviceClasses: dict[str, list[TelemetryClass]] = Field(default_factory=dict)
    bus: BusAccess | None = None
