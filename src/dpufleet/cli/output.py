"""Printing objects: kubectl-like tables, YAML and JSON."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import orjson
import yaml
from rich.table import Table
from rich.text import Text

from ..client import KindRef
from .columns import age, column_cell
from .common import stdout

FORMATS = ("table", "wide", "yaml", "json")


def plain_table(headers: Sequence[str]) -> Table:
    """Uppercase headers, no borders, columns three spaces apart, like kubectl."""
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0), header_style="none")
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    return table


def print_table(table: Table) -> None:
    console = stdout()
    with console.capture() as capture:
        console.print(table)
    lines = [line.rstrip() for line in capture.get().splitlines()]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def resource_headers(ref: KindRef, *, wide: bool, with_project: bool) -> list[str]:
    columns = [c.header for c in ref.columns if wide or not c.wide_only]
    return (["PROJECT"] if with_project else []) + ["NAME", *columns, "AGE"]


def resource_row(ref: KindRef, obj: dict[str, Any], *, wide: bool, with_project: bool) -> list[str]:
    """One object's cells under `resource_headers`: the kind's registry columns between NAME and AGE."""
    meta = obj.get("metadata") or {}
    row = [str(meta.get("project", ""))] if with_project else []
    row.append(str(meta.get("name", "")))
    row.extend(column_cell(obj, c.path) for c in ref.columns if wide or not c.wide_only)
    row.append(age(meta.get("creationTimestamp")))
    return row


def resource_table(ref: KindRef, items: list[dict[str, Any]], *, wide: bool, with_project: bool) -> Table:
    table = plain_table(resource_headers(ref, wide=wide, with_project=with_project))
    for obj in items:
        table.add_row(*(Text(v) for v in resource_row(ref, obj, wide=wide, with_project=with_project)))
    return table


def to_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)


def to_json(doc: Any) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def print_document(doc: Any, fmt: str) -> None:
    sys.stdout.write(to_yaml(doc) if fmt == "yaml" else to_json(doc) + "\n")
    sys.stdout.flush()
