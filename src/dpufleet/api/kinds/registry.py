"""The kind registry: each kind's plural, short names and the columns `dpufleet get` prints.

A domain's kinds module registers its kinds (`register`); `lookup` finds one by any of its names."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Resource


@dataclass(frozen=True)
class Column:
    """A table column: header and a dotted path into the document."""

    header: str
    path: str
    wide_only: bool = False


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    model: type[Resource]
    short_names: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    has_status: bool = True
    extra_fields: tuple[str, ...] = field(default=())
    # spec fields holding secrets: stored encrypted apart from the document, which
    # shows `<field>Set: true` instead; no read path can return them
    secret_fields: tuple[str, ...] = ()

    @property
    def singular(self) -> str:
        return self.kind.lower()


_PHASE = Column("PHASE", "status.phase")
_READY = Column("READY", "status.conditions[Ready].status")
_REASON = Column("REASON", "status.conditions[Ready].reason", wide_only=True)

REGISTRY: dict[str, KindInfo] = {}
_BY_NAME: dict[str, KindInfo] = {}


def register(info: KindInfo) -> KindInfo:
    """Add a kind to the registry under its kind name, plural and short names."""
    REGISTRY[info.kind] = info
    for alias in (info.kind.lower(), info.plural, *info.short_names):
        _BY_NAME[alias] = info
    return info


class UnknownKind(LookupError):
    def __init__(self, name: str) -> None:
        known = ", ".join(sorted(info.plural for info in REGISTRY.values()))
        super().__init__(f"unknown kind {name!r}; known kinds: {known}")


def lookup(name: str) -> KindInfo:
    """Find a kind by its name, plural or short name, case-insensitively."""
    info = REGISTRY.get(name) or _BY_NAME.get(name.lower())
    if info is None:
        raise UnknownKind(name)
    return info
