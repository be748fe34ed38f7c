"""Request context, replies and the small path router the resources register with."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dpufleet.sim.bmc import SimAccount, SimBMC, SimSession
from dpufleet.sim.messages import RedfishError

Json = dict[str, Any]


@dataclass
class Ctx:
    """What a resource handler knows about the request it answers."""

    bmc: SimBMC
    root: str  # "/redfish/v1" or "/bmc/<id>/redfish/v1"
    method: str
    body: Any = None
    account: SimAccount | None = None
    session: SimSession | None = None

    def uri(self, *parts: str) -> str:
        return "/".join((self.root, *parts)) if parts else self.root

    def link(self, *parts: str) -> Json:
        return {"@odata.id": self.uri(*parts)}

    def json_body(self) -> Json:
        if not isinstance(self.body, dict):
            raise RedfishError(400, "MalformedJSON")
        return self.body


@dataclass
class Reply:
    status: int = 200
    body: Json | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


Handler = Callable[[Ctx, dict[str, str]], "Reply | Json"]
H = TypeVar("H", bound=Callable[..., Any])


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    template: str
    handler: Handler
    privilege: str


class Router:
    """Maps (method, path under /redfish/v1) to handlers; knows which methods a path allows."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, privilege: str = "Login") -> Callable[[H], H]:
        regex = (
            "^"
            + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
            + "$"
        )

        def register(handler: H) -> H:
            self.routes.append(Route(method, re.compile(regex), template, handler, privilege))
            return handler

        return register

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method == method:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise RedfishError(405, "OperationNotAllowed", headers={"Allow": ", ".join(sorted(set(allowed)))})
        raise RedfishError(404, "ResourceNotFound", "Resource", path or "/")


ROUTER = Router()


def collection(ctx: Ctx, kind: str, name: str, parts: tuple[str, ...], members: list[str]) -> Json:
    from dpufleet.sim.redfish.schema import collection_type

    return {
        "@odata.id": ctx.uri(*parts),
        "@odata.type": collection_type(kind),
        "Name": name,
        "Members@odata.count": len(members),
        "Members": [ctx.link(*parts, member) for member in members],
    }


def status_ok(enabled: bool = True) -> Json:
    return {"State": "Enabled" if enabled else "StandbyOffline", "Health": "OK"}


def check_id(actual: str, expected: str, kind: str) -> None:
    if actual != expected:
        raise RedfishError(404, "ResourceNotFound", kind, actual)


def reject_unknown(body: Json, allowed: set[str], action: str | None = None) -> None:
    for key in body:
        if key in allowed or key.startswith("@"):
            continue
        if action:
            raise RedfishError(400, "ActionParameterUnknown", action, key)
        raise RedfishError(400, "PropertyUnknown", key)
