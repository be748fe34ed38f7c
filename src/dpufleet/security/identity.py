"""Who is calling: a subject with role grants, system-wide or per project."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .policy import Role, lessee_cap


class GrantError(ValueError):
    pass


@dataclass(frozen=True)
class Grant:
    role: Role
    project: str | None = None  # None: system-wide

    def __str__(self) -> str:
        return self.role.value if self.project is None else f"{self.role.value}@{self.project}"

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role.value, "project": self.project}

    @classmethod
    def parse(cls, value: Any) -> Grant:
        """From {"role": r, "project": p} or the string "role" / "role@project"."""
        if isinstance(value, str):
            role_text, _, project_text = value.partition("@")
            value = {"role": role_text, "project": project_text or None}
        if not isinstance(value, dict):
            raise GrantError(f"a grant must be 'role', 'role@project' or an object, not {value!r}")
        role = value.get("role")
        try:
            parsed = Role(str(role))
        except ValueError:
            raise GrantError(f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}") from None
        project = value.get("project")
        if project is not None:
            from ..api.meta import check_project

            try:
                check_project(str(project))
            except ValueError as exc:
                raise GrantError(str(exc)) from None
        return cls(parsed, str(project) if project is not None else None)


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. `via` says how: token, bootstrap, oidc."""

    name: str
    grants: tuple[Grant, ...]
    token: str | None = None
    via: str = "token"
    expires_at: datetime | None = None
    _system: frozenset[Role] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_system", frozenset(g.role for g in self.grants if g.project is None))

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(str(g) for g in self.grants)

    @property
    def system_roles(self) -> frozenset[Role]:
        return self._system

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self._system

    def describe(self) -> str:
        return ", ".join(str(g) for g in self.grants) or "no roles"

    def roles_on(self, project: str | None, lessee: str | None = None) -> set[Role]:
        """The roles this caller holds on an object owned by `project` and leased to `lessee`."""
        held = set(self._system)
        for grant in self.grants:
            if grant.project is None:
                continue
            if grant.project == project:
                held.add(grant.role)
            elif lessee is not None and grant.project == lessee:
                capped = lessee_cap(grant.role)
                if capped is not None:
                    held.add(capped)
        return held

    def projects_with(self, allowed: frozenset[Role]) -> tuple[set[str], set[str]]:
        """Projects where a grant allows an action: as owner, and (capped) as lessee."""
        owner = {g.project for g in self.grants if g.project is not None and g.role in allowed}
        lessee = {g.project for g in self.grants if g.project is not None and lessee_cap(g.role) in allowed}
        return owner, lessee
