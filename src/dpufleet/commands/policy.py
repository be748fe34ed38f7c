"""`dpufleet policy`: the policy table of this build (which roles may take which action), read
locally: docs/security-policy.md is printed from it."""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from ..cli.common import stdout


def policy(markdown: bool = typer.Option(False, "--markdown", help="print docs/security-policy.md")) -> None:
    """Print the policy table: which roles may take which action."""
    from ..security.policy import ALL_VERBS, KIND_RULES, SUBACTION_RULES, Role, action_name, render_markdown

    if markdown:
        sys.stdout.write(render_markdown())
        return
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("ACTION")
    for role in Role:
        table.add_column(role.value.upper())
    for kind, per in KIND_RULES.items():
        for verb in ALL_VERBS:
            table.add_row(action_name(kind, verb), *("yes" if r in per[verb] else "·" for r in Role))
    for sub, allowed in SUBACTION_RULES.items():
        table.add_row(sub.value, *("yes" if r in allowed else "·" for r in Role))
    stdout().print(table)
