"""`get -o FORMAT`: one printer per format, for a list and for the changes a watch brings after it.

Formats: table (default), wide, yaml, json, name, jsonpath=TEMPLATE, custom-columns=SPEC. The
value of `-o` is parsed before the server is asked, so a bad template is a usage error (exit 2).
A watch prints the list and then each changed object in the same format: table rows keep the
column widths of the first list, YAML objects are separated by `---`, templates apply per object.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import typer

from .. import API_VERSION
from ..client import KindRef
from .jsonpath import CustomColumn, Template, TemplateError, parse_custom_columns, parse_template
from .output import print_document, print_table, resource_headers, resource_row, resource_table, to_json, to_yaml

FORMAT_NAMES = ("table", "wide", "yaml", "json", "name", "jsonpath=TEMPLATE", "custom-columns=SPEC")
FORMAT_HELP = "table, wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=HEADER:PATH,..."
COLUMN_GAP = 3


@dataclass(frozen=True)
class OutputFormat:
    kind: str  # table, wide, yaml, json, name, jsonpath, custom-columns
    template: Template | None = None
    columns: tuple[CustomColumn, ...] = ()

    @property
    def tabular(self) -> bool:
        return self.kind in ("table", "wide", "custom-columns")


def parse_output(value: str) -> OutputFormat:
    """The -o value, or a typer.BadParameter naming what is wrong with it."""
    name, eq, arg = value.partition("=")
    try:
        if name == "jsonpath" and eq:
            return OutputFormat("jsonpath", template=parse_template(arg))
        if name == "custom-columns" and eq:
            return OutputFormat("custom-columns", columns=parse_custom_columns(arg))
    except TemplateError as exc:
        raise typer.BadParameter(f"{name}: {exc}", param_hint="'-o' / '--output'") from None
    if eq or name not in ("table", "wide", "yaml", "json", "name"):
        raise typer.BadParameter(f"must be one of {', '.join(FORMAT_NAMES)}", param_hint="'-o' / '--output'")
    return OutputFormat(name)


class Printer:
    """Prints objects of one kind in one format; `single` is `get KIND NAME` (one object, not a List)."""

    def __init__(self, fmt: OutputFormat, ref: KindRef, *, with_project: bool) -> None:
        self.fmt = fmt
        self.ref = ref
        self.with_project = with_project
        self._widths: list[int] | None = None
        self._documents = 0

    # --- rows -------------------------------------------------------------------------------------------

    def headers(self) -> list[str]:
        if self.fmt.kind == "custom-columns":
            return [c.header for c in self.fmt.columns]
        return resource_headers(self.ref, wide=self.fmt.kind == "wide", with_project=self.with_project)

    def row(self, obj: dict[str, Any]) -> list[str]:
        if self.fmt.kind == "custom-columns":
            return [c.cell(obj) for c in self.fmt.columns]
        return resource_row(self.ref, obj, wide=self.fmt.kind == "wide", with_project=self.with_project)

    def _line(self, cells: list[str]) -> str:
        assert self._widths is not None
        padded = [c.ljust(w) for c, w in zip(cells[:-1], self._widths, strict=False)]
        return (" " * COLUMN_GAP).join([*padded, cells[-1]]).rstrip()

    # --- lists ------------------------------------------------------------------------------------------

    def print_list(self, items: list[dict[str, Any]], *, single: bool = False) -> None:
        """What `get` prints: a table, one object (single), or a <Kind>List document."""
        kind = self.fmt.kind
        if kind in ("table", "wide"):
            print_table(resource_table(self.ref, items, wide=kind == "wide", with_project=self.with_project))
        elif kind == "custom-columns":
            self.start_stream(items)
        elif kind == "name":
            for obj in items:
                self.print_object(obj)
        else:
            doc = items[0] if single and len(items) == 1 else self._list_document(items)
            if self.fmt.template is not None:
                _write(self.fmt.template.render(doc))
            else:
                print_document(doc, kind)

    def _list_document(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": f"{self.ref.kind}List", "metadata": {}, "items": items}

    # --- watch ------------------------------------------------------------------------------------------

    def start_stream(self, items: list[dict[str, Any]]) -> None:
        """The list a watch starts from: tables fix their column widths on it, others print per object."""
        if not self.fmt.tabular:
            for obj in items:
                self.print_object(obj)
            return
        headers = self.headers()
        rows = [self.row(obj) for obj in items]
        self._widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
        _write("".join(self._line(r) + "\n" for r in [headers, *rows]))

    def print_object(self, obj: dict[str, Any]) -> None:
        """One object as a watch shows it: a row, a document, a name, or the template applied to it."""
        kind = self.fmt.kind
        if self.fmt.tabular:
            if self._widths is None:
                self.start_stream([])
            _write(self._line(self.row(obj)) + "\n")
        elif kind == "name":
            _write(f"{self.ref.singular}/{(obj.get('metadata') or {}).get('name')}\n")
        elif self.fmt.template is not None:
            _write(self.fmt.template.render(obj))
        elif kind == "yaml":
            _write(("---\n" if self._documents else "") + to_yaml(obj))
        else:
            _write(to_json(obj) + "\n")
        self._documents += 1


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
