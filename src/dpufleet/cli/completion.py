"""Shell completion of kind names (from the built-in registry: no request) and object names.

Object names come from the server, with a short timeout and every failure swallowed: a
completion that cannot reach the server offers nothing rather than printing an error into
the user's prompt. The server and token are the ones the command line would use.
"""

from __future__ import annotations

import contextlib

import typer

from ..api.kinds import REGISTRY
from ..client import Client, resolve_config

NAME_TIMEOUT = 2.0


def kind_names() -> list[str]:
    """Every way a user may name a built-in kind: singular, plural and short names."""
    names: set[str] = set()
    for info in REGISTRY.values():
        names.update((info.singular, info.plural, *info.short_names))
    return sorted(names)


def complete_kind(incomplete: str) -> list[str]:
    return [name for name in kind_names() if name.startswith(incomplete.lower())]


def complete_name(ctx: typer.Context, incomplete: str) -> list[str]:
    """Names of objects of the kind already typed, in the project given by -p (or the configured one)."""
    kind = ctx.params.get("kind")
    if not kind:
        return []
    root = ctx.find_root().params
    with contextlib.suppress(Exception):  # completion must never print a traceback into the shell
        config = resolve_config(root.get("server"), root.get("token"), ctx.params.get("project"))
        with Client.from_config(config, timeout=NAME_TIMEOUT) as client:
            items = client.list(kind, config.project).items
        names = sorted(str((obj.get("metadata") or {}).get("name", "")) for obj in items)
        typed = set(ctx.params.get("names") or ())
        return [name for name in names if name.startswith(incomplete) and name not in typed]
    return []
