"""Server-side dry run: a write that does every step of the real one and then rolls back.

The store has no separate dry-run path to keep in step with its writes: the request's write runs
as it would, in its transaction (validation, the policy hook, admission checks, uniqueness,
resourceVersion preconditions, finalizer and cascade rules, the audit record), and just before
the commit a step raises, so the transaction rolls back. Nothing is stored, no change is logged,
no watcher or controller hears of it (so no Event follows), and the answer is the object as the
transaction had written it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Connection

from ..store.store import Change, WriteHook


class _RolledBack(Exception):
    def __init__(self, changes: list[Change]) -> None:
        super().__init__("dry run")
        self.changes = changes


def dry_run(write: Callable[[WriteHook], dict[str, Any]], hook: WriteHook) -> dict[str, Any]:
    """Run `write(hook)` in dry-run mode: the result it would have, with nothing committed.

    Every store write calls its hook inside its transaction before writing; the hook given to
    the write runs the real one, then queues a step that ends the transaction with _RolledBack
    (after the audit record's own step, so that runs too).
    """
    before: list[dict[str, Any] | None] = []

    def check_then_roll_back(conn: Connection, current: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        hook(conn, current, new)
        if not before:
            before.append(current)
            conn.info["before_commit"].append(_roll_back)

    try:
        write(check_then_roll_back)
    except _RolledBack as done:
        if done.changes:  # the first change is the object's own (those of a cascade follow it)
            result: dict[str, Any] = orjson.loads(done.changes[0].data)
            return result
        if before and before[0] is not None:
            return before[0]  # a write that would change nothing answers the object as it is
        raise AssertionError("a dry-run write logged no change and had no object") from None
    raise AssertionError("a store write returned without calling its hook: it was not a dry run")


def _roll_back(conn: Connection) -> None:
    raise _RolledBack(list(conn.info["changes"]))
