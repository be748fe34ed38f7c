"""Authorisation and audit for one API request, from the policy table.

- Reads: `check_object` after the object is loaded; `list_filter` before a list or watch,
  which returns None (everything in scope) or a predicate keeping what the caller owns or leases.
- Writes: `hook` returns a store write hook that decides inside the write's transaction, on
  the object as it is there (no check-then-write race), and appends the audit record in the same
  transaction. A refused or failed write is recorded by `record_failure` in its own transaction.

A caller with no role in an object's owner or lessee project gets the store's own 404
message, so it cannot tell a hidden object from a missing one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from ..api.errors import APIError, Forbidden, NotFound
from ..api.kinds import KindInfo
from ..security.audit import AuditEntry, AuditLog, append
from ..security.identity import Identity
from ..security.policy import (
    SUBACTION_RULES,
    Role,
    SubAction,
    Verb,
    action_name,
    allowed_for,
    allowed_roles,
    first_denied,
    sensitive_actions,
)
from ..store.store import WriteHook

Visible = Callable[[dict[str, Any]], bool]


def lessee_of(doc: dict[str, Any] | None) -> str | None:
    spec = (doc or {}).get("spec")
    lessee = spec.get("lessee") if isinstance(spec, dict) else None
    return lessee if isinstance(lessee, str) else None


def not_found(info: KindInfo, project: str, name: str) -> NotFound:
    return NotFound(f"{info.singular} {name!r} not found in project {project!r}")


def _roles_text(roles: set[Role] | frozenset[Role]) -> str:
    return ", ".join(sorted(r.value for r in roles)) or "none"


@dataclass
class Access:
    identity: Identity
    audit: AuditLog
    source: str

    # --- decisions ----------------------------------------------------------------------------------------

    def forbidden(self, action: str, roles: set[Role], where: str) -> Forbidden:
        allowed = allowed_for(action)
        return Forbidden(
            f"forbidden: {self.identity.name} (roles {_roles_text(roles)} {where}) may not {action}; "
            f"allowed roles: {_roles_text(allowed)}",
            {"action": action, "roles": sorted(r.value for r in roles)},
        )

    def require(self, action: SubAction, project: str | None = None) -> None:
        """A sub-action outside any object (token-admin, audit-read, metrics-read, agent-report)."""
        roles = self.identity.roles_on(project) if project else set(self.identity.system_roles)
        if not roles & SUBACTION_RULES[action]:
            where = f"in project {project!r}" if project else "system-wide"
            raise self.forbidden(action.value, roles, where)

    def check_object(self, info: KindInfo, verb: Verb, doc: dict[str, Any]) -> None:
        if self.identity.is_admin:
            return
        meta = doc.get("metadata") or {}
        project, name = str(meta.get("project")), str(meta.get("name"))
        roles = self.identity.roles_on(project, lessee_of(doc))
        if not roles:
            raise not_found(info, project, name)
        denied = first_denied(roles, info.kind, verb, ())
        if denied:
            raise self.forbidden(denied, roles, f"on {info.singular} {name!r} in project {project!r}")

    def check_visible(self, info: KindInfo, doc: dict[str, Any]) -> None:
        """404, as for a missing object, unless the caller holds a role on it (owner or lessee)."""
        meta = doc.get("metadata") or {}
        if not self.identity.is_admin and not self.identity.roles_on(str(meta.get("project")), lessee_of(doc)):
            raise not_found(info, str(meta.get("project")), str(meta.get("name")))

    def list_filter(self, info: KindInfo, verb: Verb, project: str | None) -> Visible | None:
        """None when the caller may see every object in scope; else a predicate (or 403)."""
        allowed = allowed_roles(info.kind, verb)
        if self.identity.system_roles & allowed:
            return None
        if project is not None and self.identity.roles_on(project) & allowed:
            return None
        owner, lessee = self.identity.projects_with(allowed)
        if project is not None:
            owner &= {project}
        if not owner and not lessee:
            roles = self.identity.roles_on(project) if project is not None else set(self.identity.system_roles)
            where = f"in project {project!r}" if project is not None else "across projects"
            if project is not None and not roles:
                roles = {g.role for g in self.identity.grants}
                where = "in their projects"
            raise self.forbidden(action_name(info.kind, verb), roles, where)

        def visible(doc: dict[str, Any]) -> bool:
            meta = doc.get("metadata") or {}
            return meta.get("project") in owner or lessee_of(doc) in lessee

        return visible

    # --- writes -------------------------------------------------------------------------------------------

    def check_create(self, info: KindInfo, project: str, doc: dict[str, Any]) -> None:
        """A create needs no stored object to decide, so it is decided before the write is queued."""
        if info.kind == "UpdateRequest":
            source = ((doc.get("spec") or {}).get("source")) or "control-plane"
            if source != "control-plane":  # who asked is known from how they asked, not from what they say
                raise Forbidden(
                    f"spec.source {source!r}: requests through the API are the control plane's; hosts and "
                    "agents file theirs over the agent listener, where their certificate says who they are"
                )
        if self.identity.is_admin:
            return
        roles = self.identity.roles_on(project)
        denied = first_denied(roles, info.kind, Verb.CREATE, sensitive_actions(info.kind, Verb.CREATE, None, doc))
        if denied:
            raise self.forbidden(denied, roles, f"in project {project!r}")

    def hook(self, info: KindInfo, verb: Verb, project: str, name: str | None) -> WriteHook:
        def decide(conn: Connection, current: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            target = current if current is not None else new
            obj_name = name or str(((target or {}).get("metadata") or {}).get("name", ""))
            subs = sensitive_actions(info.kind, verb, current, new)
            roles = self.identity.roles_on(project, lessee_of(current))
            if not self.identity.is_admin:
                if not roles and current is not None:
                    raise not_found(info, project, obj_name)
                denied = first_denied(roles, info.kind, verb, subs)
                if denied:
                    where = f"on {info.singular} {obj_name!r} in project {project!r}"
                    if current is None:
                        where = f"in project {project!r}"
                    raise self.forbidden(denied, roles, where)
            append(conn, self.entry(info, verb, project, obj_name, detail=",".join(subs)))

        return decide

    def entry(
        self,
        info: KindInfo,
        verb: Verb,
        project: str,
        name: str,
        *,
        result: str = "Success",
        code: int = 200,
        detail: str = "",
    ) -> AuditEntry:
        return AuditEntry(
            subject=self.identity.name,
            roles=self.identity.describe(),
            action=action_name(info.kind, verb),
            kind=info.kind,
            project=project,
            name=name,
            result=result,
            code=code,
            source=self.source,
            detail=detail,
        )

    def record_failure(self, info: KindInfo, verb: Verb, project: str, name: str, exc: APIError) -> None:
        """The refusal or failure of a write. Only the reason is kept: messages may quote values."""
        detail = exc.details.get("action", "") if isinstance(exc, Forbidden) else ""
        self.audit.record(self.entry(info, verb, project, name, result=exc.reason, code=exc.code, detail=str(detail)))

    def record(self, action: str, kind: str, name: str, project: str = "", *, detail: str = "") -> None:
        """A successful action outside the object store (token administration)."""
        self.audit.record(
            AuditEntry(
                subject=self.identity.name,
                roles=self.identity.describe(),
                action=action,
                kind=kind,
                project=project,
                name=name,
                source=self.source,
                detail=detail,
            )
        )
