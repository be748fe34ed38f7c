"""Which project a device belongs to, on every path an agent, a host agent or a bootstrapping DPU takes.

A device speaks for itself only by its serial (its fleet certificate, its IDevID, its report), and a
serial names no project. Assuming one ("default") put every DPU of every other project in the wrong
place without a word. So each path asks here, and the answer comes from what the operator set up:

1. the object the serial already is: the DPU named after it (`dpu-<serial>`, as discovery, reports
   and bootstrap name DPUs), or the Host whose agent reports with that serial;
2. for a host agent whose Host does not exist yet: the project of the DPUs its PCI slots hold (or of
   the Discovery expecting them);
3. for a device not known yet: the project its enrollment token named (`dpufleet enroll token create
   --project`), else the project of the Discovery whose `spec.expectedSerials` lists it.

Nothing else: a device none of these places is refused (`NoProject`, 403) with what is missing, never
put in a project by default. Serials are fleet-unique: a serial found in two projects is refused
(`SerialConflict`, 409, naming both) until an operator deletes the wrong object; a second DPU for a
serial another project holds is refused when it is created (`protect_serials`).

Answers are cached per serial (most reports are heartbeats of known devices); a cached project that
no longer holds the object shows as NotFound on the write, and `forget` makes the next request ask again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, text

from ..api.errors import APIError, NotFound
from ..api.naming import dpu_name, host_name
from ..crypto.pki import AgentIdentity
from ..store.store import Store

EnrolledProject = Callable[[AgentIdentity], str | None]
SERIAL_NAME_PREFIX = dpu_name("x")[:-1]  # "dpu-": the names serials give DPUs


class NoProject(APIError):
    """Nothing the operator set up places this device in a project."""

    code = 403
    reason = "NoProject"


class SerialConflict(APIError):
    """A serial is claimed in two projects; serials are fleet-unique."""

    code = 409
    reason = "SerialConflict"


# The distinct projects holding objects of a kind. The objects index is (kind, project, name): the
# recursive part walks it one project at a time (one index seek each) instead of reading every DPU.
_PROJECTS_OF_KIND = text(
    """
    WITH RECURSIVE p(project) AS (
        SELECT MIN(project) FROM objects WHERE kind = :kind
        UNION ALL
        SELECT (SELECT MIN(o.project) FROM objects o WHERE o.kind = :kind AND o.project > p.project)
        FROM p WHERE p.project IS NOT NULL
    )
    SELECT project FROM p WHERE project IS NOT NULL
    """
)
_HOLDS = text("SELECT 1 FROM objects WHERE kind = :kind AND project = :project AND name = :name")
_TX_PROJECTS = "dpufleet.tenancy.dpu-projects"
# PostgreSQL: the guard's transaction-scoped advisory lock. Several API servers (or controller
# processes) write to one database; without it, two transactions could each find the serial free
# in the other's project and both commit. Held until commit, so serial-named DPU creates are
# serialised across processes (SQLite has one writer already).
_SERIAL_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
SERIAL_LOCK_KEY = 0x64707573657269  # "dpuseri": a constant key for "serial-named DPU creates"


def projects_of_kind(conn: Connection, kind: str) -> set[str]:
    return {str(row[0]) for row in conn.execute(_PROJECTS_OF_KIND, {"kind": kind})}


def projects_with(conn: Connection, kind: str, name: str, among: Iterable[str] | None = None) -> list[str]:
    """The projects (of `among`, default: all) that hold a `kind` object called `name`, sorted."""
    candidates = projects_of_kind(conn, kind) if among is None else set(among)
    return sorted(p for p in candidates if conn.execute(_HOLDS, {"kind": kind, "project": p, "name": name}).first())


def _listed(projects: Iterable[str]) -> str:
    return ", ".join(repr(p) for p in sorted(set(projects)))


def _refuse_second_dpu(conn: Connection, dpu: dict[str, Any], batch: list[dict[str, Any]]) -> None:
    """A DPU named after a serial (`dpu-<serial>`) that another project already holds is refused.

    The projects holding DPUs are read once per transaction (a group commit of a thousand creates
    reads them once): in a fleet of one project nothing more is read; else one index seek per other
    project. On PostgreSQL the read comes after an advisory lock that other processes' serial-named
    creates also take, so what it reads stays true until this transaction commits."""
    meta = dpu["metadata"]
    name, project = meta["name"], meta["project"]
    if not name.startswith(SERIAL_NAME_PREFIX):
        return
    tx = conn.get_transaction()
    cached = conn.info.get(_TX_PROJECTS)
    if cached is None or cached[0] is not tx:
        if conn.dialect.name == "postgresql":  # before the read: it then sees what the last holder committed
            conn.execute(_SERIAL_LOCK, {"key": SERIAL_LOCK_KEY})
        cached = conn.info[_TX_PROJECTS] = (tx, projects_of_kind(conn, "DPU"))
    others = projects_with(conn, "DPU", name, cached[1] - {project}) if cached[1] - {project} else []
    others += [
        o["metadata"]["project"] for o in batch if o["metadata"]["name"] == name and o["metadata"]["project"] != project
    ]
    if others:
        raise SerialConflict(
            f"dpu/{name} already exists in project {_listed(others)}: a DPU is named after its serial and serials "
            f"are fleet-unique, so project {project!r} cannot hold it too (delete the other one first)",
            {"name": name, "projects": sorted({*others, project})},
        )
    cached[1].add(project)  # holds a DPU once this transaction commits (a rollback ends the transaction)


def protect_serials(store: Store) -> None:
    """Serials are fleet-unique: the second DPU for one, in whatever project and by whatever path, is refused."""
    store.add_create_guard("DPU", _refuse_second_dpu)


class ProjectResolver:
    """The project of a device, from its objects, its enrollment or its Discovery (see the module doc)."""

    def __init__(self, store: Store, enrolled: EnrolledProject | None = None) -> None:
        protect_serials(store)  # what a cached answer relies on: no second project gets the serial later
        self.store = store
        self.enrolled = enrolled
        self._dpus: dict[str, str] = {}  # DPU name -> project
        self._hosts: dict[str, tuple[str, str]] = {}  # host agent serial -> (project, Host name)
        self._lock = threading.Lock()

    # --- DPUs ------------------------------------------------------------------------------------------------

    def dpu_projects(self, serial: str) -> list[str]:
        """Projects holding the DPU this serial names (more than one is a conflict)."""
        with self.store.connect() as conn:
            return projects_with(conn, "DPU", dpu_name(serial))

    def known_dpu(self, serial: str) -> str | None:
        """The project of the existing DPU for `serial`, None if no project has it; 409 if two have."""
        name = dpu_name(serial)
        with self._lock:
            cached = self._dpus.get(name)
        if cached is not None:
            return cached
        projects = self.dpu_projects(serial)
        if len(projects) > 1:
            raise SerialConflict(
                f"serial {serial} is dpu/{name} in projects {_listed(projects)}: serials are fleet-unique, "
                "delete the DPU object in the project it does not belong to",
                {"serial": serial, "projects": projects},
            )
        if not projects:
            return None
        with self._lock:
            self._dpus[name] = projects[0]
        return projects[0]

    def dpu(self, serial: str) -> str:
        """The project a DPU agent's report for `serial` goes to: its DPU's, else where it was admitted."""
        return self.known_dpu(serial) or self.admitted(AgentIdentity("dpu", serial))

    def dpu_object(self, serial: str) -> dict[str, Any]:
        """The existing DPU for `serial` (install orders, updates, bootstrap need one); NotFound naming it."""
        project = self.known_dpu(serial)
        name = dpu_name(serial)
        if project is None:
            raise NotFound(f"no DPU with serial {serial} is known in any project (dpu/{name})")
        try:
            return self.store.get("DPU", name, project)
        except NotFound:
            self.forget_dpu(serial)
            raise NotFound(f"no DPU with serial {serial} is known in any project (dpu/{name})") from None

    def forget_dpu(self, serial: str) -> None:
        with self._lock:
            self._dpus.pop(dpu_name(serial), None)

    # --- hosts -----------------------------------------------------------------------------------------------

    def find_host(self, serial: str) -> dict[str, Any] | None:
        """The Host whose agent reports with this serial (its certificate's), in whichever project, or None."""
        with self._lock:
            cached = self._hosts.get(serial)
        if cached is not None:
            try:
                host = self.store.get("Host", cached[1], cached[0])
                if (host.get("status") or {}).get("serialNumber") == serial:
                    return host
            except NotFound:
                pass
            with self._lock:
                self._hosts.pop(serial, None)
        found = [
            h
            for h in self.store.list_fields("Host", [("status", "serialNumber")])
            if (h.get("status") or {}).get("serialNumber") == serial
        ]
        if len(found) > 1:
            raise SerialConflict(
                f"host serial {serial} reports for Hosts in projects {_listed(h['metadata']['project'] for h in found)}: "
                "serials are fleet-unique, delete the Host object that is wrong",
                {"serial": serial, "projects": sorted(h["metadata"]["project"] for h in found)},
            )
        if not found:
            return None
        meta = found[0]["metadata"]
        with self._lock:
            self._hosts[serial] = (meta["project"], meta["name"])
        return self.store.get("Host", meta["name"], meta["project"])

    def host(self, serial: str, hostname: str | None, dpu_serials: Iterable[str]) -> str:
        """The project a host agent's report goes to: its Host's, else its DPUs', else where it was admitted."""
        with self._lock:
            cached = self._hosts.get(serial)
        if cached is not None:  # a Host deleted since shows as NotFound on the write, and is forgotten
            return cached[0]
        known = self.find_host(serial)
        if known is not None:
            return str(known["metadata"]["project"])
        name = host_name(hostname or serial)
        with self.store.connect() as conn:
            named = projects_with(conn, "Host", name)
        if len(named) == 1:  # an operator created the Host before its agent first reported
            return named[0]
        if len(named) > 1:
            raise SerialConflict(
                f"host/{name} exists in projects {_listed(named)}: say which one it is by deleting the others",
                {"serial": serial, "projects": named},
            )
        serials = list(dpu_serials)
        by_dpus = {p for s in serials if (p := self.known_dpu(s)) is not None}
        if not by_dpus:  # DPUs not known yet, but expected: the host goes where they are expected
            by_dpus = {p for s in serials for p in self.discovery_projects(s)}
        if len(by_dpus) > 1:
            raise SerialConflict(
                f"host {serial} holds DPUs of projects {_listed(by_dpus)}: a host and its DPUs are in one project",
                {"serial": serial, "projects": sorted(by_dpus)},
            )
        if by_dpus:
            return by_dpus.pop()
        return self.admitted(AgentIdentity("host", serial))

    def forget_host(self, serial: str) -> None:
        with self._lock:
            self._hosts.pop(serial, None)

    # --- not known yet ---------------------------------------------------------------------------------------

    def discovery_projects(self, serial: str) -> list[str]:
        """Projects of the Discoveries whose expectedSerials list this serial."""
        return sorted(
            {
                d["metadata"]["project"]
                for d in self.store.list_fields("Discovery", [("spec", "expectedSerials")])
                if serial in ((d.get("spec") or {}).get("expectedSerials") or [])
            }
        )

    def admitted(self, identity: AgentIdentity) -> str:
        """For a device no object names yet: the project its enrollment token named, else its Discovery's."""
        enrolled = self.enrolled(identity) if self.enrolled is not None else None
        if enrolled:
            return enrolled
        listed = self.discovery_projects(identity.serial)
        if len(listed) > 1:
            raise SerialConflict(
                f"serial {identity.serial} is in expectedSerials of Discoveries in projects {_listed(listed)}: "
                "serials are fleet-unique, remove it from the ones it does not belong to",
                {"serial": identity.serial, "projects": listed},
            )
        if listed:
            return listed[0]
        what = "dpu/" + dpu_name(identity.serial) if identity.role == "dpu" else "its Host (or one of its DPUs)"
        raise NoProject(
            f"no project for {identity}: no project holds {what}, its enrollment token named no project, and no "
            f"Discovery lists {identity.serial} in spec.expectedSerials; create the object in its project, list the "
            "serial in a Discovery there, or enroll the device with a token created with --project",
            {"serial": identity.serial, "role": identity.role},
        )
