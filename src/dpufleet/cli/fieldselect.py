"""`--field-selector`: parsed before anything is sent, and checked again on what comes back.

The server filters by `fieldSelector`; a server that predates field selectors ignores the
parameter and answers everything. Checking each object here as well makes `get
--field-selector` give the same answer from either, and a typo a usage error naming the term.
Semantics as in kubectl: terms joined by commas must all hold; `=` and `==` are equal, `!=` is
not equal; a missing field compares as the empty string; booleans are `true`/`false`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .columns import evaluate

_TERM = re.compile(r"^(?P<path>[A-Za-z0-9_][A-Za-z0-9_.\-]*?)\s*(?P<op>==|!=|=)\s*(?P<value>[^=!]*)$")


class FieldSelectorError(ValueError):
    """A term that is not `path=value`, `path==value` or `path!=value`."""


@dataclass(frozen=True)
class Term:
    path: str
    equal: bool
    value: str

    def matches(self, obj: dict[str, Any]) -> bool:
        return (_text(evaluate(obj, self.path)) == self.value) == self.equal


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[Term, ...]

    def matches(self, obj: dict[str, Any]) -> bool:
        return all(term.matches(obj) for term in self.terms)


def parse_field_selector(text: str) -> FieldSelector:
    terms = []
    for raw in text.split(","):
        part = raw.strip()
        m = _TERM.match(part)
        if not part or not m or ".." in m.group("path") or m.group("path").endswith("."):
            raise FieldSelectorError(
                f"{part!r} is not a field selector term: use FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE "
                "(for example status.phase=Ready), joined by commas"
            )
        terms.append(Term(m.group("path"), m.group("op") != "!=", m.group("value").strip()))
    return FieldSelector(tuple(terms))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
