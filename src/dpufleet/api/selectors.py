"""Label selectors: matchLabels + matchExpressions, and the kubectl string form (`a=b,c in (x,y),!d`);
field selectors over the document (`status.phase=Ready,spec.hostRef!=h1`)."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .meta import check_label_key


class SelectorError(ValueError):
    """A label selector that cannot be parsed or is inconsistent."""


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class Requirement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    operator: Operator
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Requirement:
        check_label_key(self.key)
        if self.operator in (Operator.IN, Operator.NOT_IN) and not self.values:
            raise ValueError(f"matchExpressions[{self.key}]: operator {self.operator} needs at least one value")
        if self.operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and self.values:
            raise ValueError(f"matchExpressions[{self.key}]: operator {self.operator} takes no values")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        match self.operator:
            case Operator.IN:
                return self.key in labels and labels[self.key] in self.values
            case Operator.NOT_IN:
                return self.key not in labels or labels[self.key] not in self.values
            case Operator.EXISTS:
                return self.key in labels
            case Operator.DOES_NOT_EXIST:
                return self.key not in labels


class LabelSelector(BaseModel):
    """Selects objects by labels. An empty selector selects everything."""

    model_config = ConfigDict(extra="forbid")

    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[Requirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.matchLabels.items():
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.matchExpressions)

    def is_empty(self) -> bool:
        return not self.matchLabels and not self.matchExpressions

    def to_string(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.matchLabels.items())]
        for req in self.matchExpressions:
            match req.operator:
                case Operator.IN if len(req.values) == 1:
                    parts.append(f"{req.key}={req.values[0]}")
                case Operator.NOT_IN if len(req.values) == 1:
                    parts.append(f"{req.key}!={req.values[0]}")
                case Operator.IN:
                    parts.append(f"{req.key} in ({','.join(req.values)})")
                case Operator.NOT_IN:
                    parts.append(f"{req.key} notin ({','.join(req.values)})")
                case Operator.EXISTS:
                    parts.append(req.key)
                case Operator.DOES_NOT_EXIST:
                    parts.append(f"!{req.key}")
        return ",".join(parts)


_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<notexists>!\s*(?P<nkey>[^\s,!=()]+))"
    r"|(?P<set>(?P<skey>[^\s,!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\))"
    r"|(?P<eq>(?P<ekey>[^\s,!=()]+)\s*(?P<eop>==|=|!=)\s*(?P<evalue>[^\s,!=()]*))"
    r"|(?P<exists>(?P<xkey>[^\s,!=()]+))"
    r")\s*(?:,|$)"
)


def parse_selector(text: str | None) -> LabelSelector:
    """Parse the kubectl selector syntax into a LabelSelector.

    `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, joined by commas.
    """
    selector = LabelSelector()
    if not text or not text.strip():
        return selector
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"label selector {text!r}: cannot parse at {text[pos:]!r}")
        pos = m.end()
        try:
            if m.group("notexists"):
                selector.matchExpressions.append(Requirement(key=m.group("nkey"), operator=Operator.DOES_NOT_EXIST))
            elif m.group("set"):
                inner = m.group("values")
                values = [v.strip() for v in inner.split(",")] if inner.strip() else []
                op = Operator.IN if m.group("op") == "in" else Operator.NOT_IN
                selector.matchExpressions.append(Requirement(key=m.group("skey"), operator=op, values=values))
            elif m.group("eq"):
                key, value = m.group("ekey"), m.group("evalue")
                check_label_key(key)
                if m.group("eop") == "!=":
                    selector.matchExpressions.append(Requirement(key=key, operator=Operator.NOT_IN, values=[value]))
                elif key in selector.matchLabels and selector.matchLabels[key] != value:
                    selector.matchExpressions.append(Requirement(key=key, operator=Operator.IN, values=[value]))
                else:
                    selector.matchLabels[key] = value
            else:
                selector.matchExpressions.append(Requirement(key=m.group("xkey"), operator=Operator.EXISTS))
        except ValueError as exc:
            raise SelectorError(f"label selector {text!r}: {_first_error(exc)}") from None
    return selector


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            return str(items[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


# --- field selectors ------------------------------------------------------------------------------------

# Field paths name the project as Kubernetes names the namespace, so a kubectl habit works.
FIELD_ALIASES = {"metadata.namespace": "metadata.project"}
_FIELD_PATH = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_FIELD_TERM = re.compile(r"^\s*(?P<path>[^\s=!]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*?)\s*$")


class FieldRequirement(BaseModel):
    """`path op value`: the value at a dotted path of the document compared, as text, with `value`."""

    model_config = ConfigDict(frozen=True)

    path: tuple[str, ...]
    equal: bool
    value: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    def matches(self, doc: dict[str, Any]) -> bool:
        return (field_text(doc, self.path) == self.value) == self.equal


class FieldSelector(BaseModel):
    """Requirements that must all hold (`status.phase=Ready,spec.hostRef!=h1`)."""

    model_config = ConfigDict(frozen=True)

    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, doc: dict[str, Any]) -> bool:
        return all(req.matches(doc) for req in self.requirements)

    def is_empty(self) -> bool:
        return not self.requirements

    def to_string(self) -> str:
        return ",".join(f"{r.dotted}{'=' if r.equal else '!='}{r.value}" for r in self.requirements)


def field_text(doc: Any, path: tuple[str, ...]) -> str | None:
    """The value at `path` as a field selector compares it: a string as is, true/false, a number as
    JSON writes it, "" for a missing field or null (as Kubernetes treats unset fields); None for an
    object or a list, which equals no value."""
    here = doc
    for part in path:
        if not isinstance(here, dict) or part not in here:
            return ""
        here = here[part]
    if here is None:
        return ""
    if isinstance(here, bool):
        return "true" if here else "false"
    if isinstance(here, str):
        return here
    if isinstance(here, int | float):
        return json.dumps(here)
    return None


def parse_field_selector(text: str | None) -> FieldSelector:
    """Parse `path=value`, `path==value` and `path!=value` terms joined by commas.

    Paths are dotted keys into the document (`status.phase`, `spec.hostRef`, `metadata.name`;
    `metadata.namespace` means `metadata.project`). Values run to the next comma.
    """
    if not text or not text.strip():
        return FieldSelector()
    terms: list[FieldRequirement] = []
    for raw in text.split(","):
        m = _FIELD_TERM.match(raw)
        if m is None:
            raise SelectorError(
                f"field selector {text!r}: cannot parse {raw.strip()!r}; write path=value, path==value or path!=value"
            )
        path = FIELD_ALIASES.get(m.group("path"), m.group("path"))
        if not _FIELD_PATH.fullmatch(path):
            raise SelectorError(
                f"field selector {text!r}: {m.group('path')!r} is not a dotted field path (like status.phase)"
            )
        terms.append(FieldRequirement(path=tuple(path.split(".")), equal=m.group("op") != "!=", value=m.group("value")))
    return FieldSelector(requirements=tuple(terms))
