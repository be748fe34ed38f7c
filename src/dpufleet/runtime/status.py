"""Read-modify-write of an object's status with optimistic concurrency.

Several writers own different parts of one status (the BMC controller the
identity and firmware, the agent the OS inventory, the host agent the pairing):
each changes only its part on the current status, and retries on a conflict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..api.errors import Conflict
from ..store.store import Store

StatusMutator = Callable[[dict[str, Any]], None]


def mutate_status_sync(
    store: Store,
    kind: str,
    name: str,
    mutate: StatusMutator,
    project: str = "default",
    attempts: int = 8,
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`current`, when given, is the object as the caller last read or wrote it: the first attempt
    writes on it (its resourceVersion the precondition) without reading it again."""
    for attempt in range(attempts):
        if current is None or attempt > 0:
            current = store.get(kind, name, project)
        status = dict(current.get("status") or {})
        mutate(status)
        try:
            return store.update_status(kind, name, status, project, current["metadata"]["resourceVersion"])
        except Conflict:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def mutate_status(
    store: Store,
    kind: str,
    name: str,
    mutate: StatusMutator,
    project: str = "default",
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return await store.call(mutate_status_sync, store, kind, name, mutate, project, 8, current)
