"""kubectl's output templates: `-o jsonpath=TEMPLATE` and `-o custom-columns=HEADER:PATH,...`.

A template is text with actions in braces, as in kubectl:

    {.metadata.name}                         a value; several matches are joined by spaces
    {range .items[*]}{.metadata.name}{"\\n"}{end}    repeat the inner template for each match
    {"\\t"}                                   a quoted literal (JSON string escapes)
    {.status.conditions[?(@.type=="Ready")].status}    filters, slices, [*], ..name

The expressions themselves are JSONPath, evaluated by jsonpath-ng (its `ext` dialect, which
has filters); this module only adds kubectl's template syntax around them (the leading `.` is
the current object; inside `range`, the current element). Everything is parsed before the
server is asked, so a typo is a usage error, not a half-printed result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext import parse as _parse

from .columns import NONE, cell


class TemplateError(ValueError):
    """A template or column spec that cannot be parsed; the message names the part."""


def compile_path(expr: str) -> JSONPath:
    """`.a.b`, `$.a.b`, `@.a`, `{.a.b}` or `a.b` as a JSONPath over the current object."""
    text = expr.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith(("$", "@")):
        text = text[1:]
    if not text.startswith((".", "[")):
        text = "." + text
    try:
        return _parse("$" + text if text != "." else "$")
    except (JSONPathError, Exception) as exc:  # its lexer raises plain Exceptions too
        raise TemplateError(f"{expr!r} is not a valid path: {exc}") from None


def find(path: JSONPath, doc: Any) -> list[Any]:
    try:
        return [match.value for match in path.find(doc)]
    except Exception:  # a filter comparing incomparable values: no match, as kubectl's missing keys
        return []


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# --- templates --------------------------------------------------------------------------------------------


@dataclass
class _Text:
    text: str

    def render(self, _doc: Any) -> str:
        return self.text


@dataclass
class _Value:
    path: JSONPath

    def render(self, doc: Any) -> str:
        return " ".join(_text(v) for v in find(self.path, doc))


@dataclass
class _Range:
    path: JSONPath
    body: list[Any] = field(default_factory=list)

    def render(self, doc: Any) -> str:
        values = find(self.path, doc)
        if len(values) == 1 and isinstance(values[0], list):  # {range .items}: its elements, as kubectl
            values = values[0]
        return "".join(node.render(item) for item in values for node in self.body)


@dataclass(frozen=True)
class Template:
    nodes: tuple[Any, ...]
    source: str

    def render(self, doc: Any) -> str:
        return "".join(node.render(doc) for node in self.nodes)


def _actions(template: str) -> Iterator[tuple[bool, str, int]]:
    """(is_action, text, position) pieces; braces inside quotes or brackets do not end an action."""
    i, start, n = 0, 0, len(template)
    while i < n:
        if template[i] != "{":
            i += 1
            continue
        if i > start:
            yield False, template[start:i], start
        j, depth, quote = i + 1, 0, ""
        while j < n:
            ch = template[j]
            if quote:
                if ch == "\\":
                    j += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch in "[(":
                depth += 1
            elif ch in "])":
                depth -= 1
            elif ch == "}" and depth <= 0:
                break
            j += 1
        if j >= n:
            raise TemplateError(f"unclosed '{{' at position {i + 1} of the template")
        yield True, template[i + 1 : j].strip(), i + 1
        i = start = j + 1
    if start < n:
        yield False, template[start:], start


def parse_template(template: str) -> Template:
    root: list[Any] = []
    stack: list[list[Any]] = [root]
    for is_action, text, pos in _actions(template):
        if not is_action:
            stack[-1].append(_Text(text))
        elif text == "end":
            if len(stack) == 1:
                raise TemplateError(f"'{{end}}' at position {pos} has no '{{range ...}}'")
            stack.pop()
        elif text.startswith("range ") or text == "range":
            if not text[5:].strip():
                raise TemplateError(f"'{{range}}' at position {pos} needs a path, e.g. {{range .items[*]}}")
            node = _Range(compile_path(text[5:]))
            stack[-1].append(node)
            stack.append(node.body)
        elif text.startswith('"'):
            try:
                stack[-1].append(_Text(str(json.loads(text, strict=False))))
            except json.JSONDecodeError:
                raise TemplateError(f"{text} at position {pos} is not a valid quoted string") from None
        elif not text:
            raise TemplateError(f"empty '{{}}' at position {pos}")
        else:
            stack[-1].append(_Value(compile_path(text)))
    if len(stack) > 1:
        raise TemplateError("'{range ...}' without its '{end}'")
    return Template(tuple(root), template)


# --- custom columns ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomColumn:
    header: str
    path: JSONPath
    source: str

    def cell(self, doc: Any) -> str:
        values = find(self.path, doc)
        if not values:
            return NONE
        return cell(values[0] if len(values) == 1 else values)


def _split_top(spec: str) -> list[str]:
    """Split at commas outside brackets and quotes (filters may hold commas)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(spec):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return parts


def parse_custom_columns(spec: str) -> tuple[CustomColumn, ...]:
    columns = []
    for part in _split_top(spec):
        header, colon, path = part.strip().partition(":")
        if not colon or not header.strip() or not path.strip():
            raise TemplateError(f"column {part.strip()!r} must be HEADER:PATH, e.g. NAME:.metadata.name")
        columns.append(CustomColumn(header.strip(), compile_path(path), path.strip()))
    if not columns:
        raise TemplateError("no columns: give HEADER:PATH pairs separated by commas")
    return tuple(columns)
