"""Admission rules across services: a dependency cycle is refused when it would be written.

The check runs as a store spec guard, inside the write's transaction, on every create and spec
change of a DPUService, by whatever path (API, controller, test): it reads the project's other
services in that transaction. On SQLite writes are serialised, so two writes that each close half
of a cycle cannot both pass; on PostgreSQL they could, and the scheduler refuses to place a service
that is part of a cycle (condition Scheduled=False, reason DependencyCycle) as the backstop.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ..api.errors import Invalid
from ..store.store import Store
from .scheduling import find_cycle


def dependency_graph(services: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {
        s["metadata"]["name"]: [d["service"] for d in (s.get("spec") or {}).get("dependsOn") or []] for s in services
    }


def _refuse_cycle(conn: Connection, service: dict[str, Any]) -> None:
    meta = service["metadata"]
    others = [s for s in Store.objects_in(conn, "DPUService", meta["project"]) if s["metadata"]["name"] != meta["name"]]
    graph = dependency_graph([*others, service])
    cycle = find_cycle(graph)
    if cycle is not None and meta["name"] in cycle:
        raise Invalid(f"spec.dependsOn: dependency cycle {' -> '.join(cycle)}", {"cycle": cycle})


def refuse_dependency_cycles(store: Store) -> None:
    """Refuse, at admission, a DPUService whose dependsOn closes a cycle (the error names it)."""
    store.add_spec_guard("DPUService", _refuse_cycle)
