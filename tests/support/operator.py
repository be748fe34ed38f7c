"""What an operator does with the HTTP API, for the integration tests: create, read, wait."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from support.net import poll
from support.server import BASE


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            found: dict[str, Any] = cond
            return found
    return None


def is_true(obj: dict[str, Any], type_: str) -> bool:
    cond = condition(obj, type_)
    return cond is not None and cond.get("status") == "True"


@dataclass
class Operator:
    """What an operator does with the HTTP API, in one project."""

    http: httpx.Client
    project: str = "default"

    def path(self, plural: str, name: str | None = None) -> str:
        base = f"{BASE}/projects/{self.project}/{plural}"
        return f"{base}/{name}" if name else base

    def create(self, plural: str, doc: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(self.path(plural), json=doc)
        assert resp.status_code == 201, f"creating {plural}: HTTP {resp.status_code}: {resp.text}"
        created: dict[str, Any] = resp.json()
        return created

    def replace(self, plural: str, doc: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.put(self.path(plural, doc["metadata"]["name"]), json=doc)
        assert resp.status_code == 200, f"replacing {plural}: HTTP {resp.status_code}: {resp.text}"
        replaced: dict[str, Any] = resp.json()
        return replaced

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch: no resourceVersion, so a controller writing status meanwhile is no conflict."""
        resp = self.http.patch(
            self.path(plural, name), json=body, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert resp.status_code == 200, f"patching {plural}/{name}: HTTP {resp.status_code}: {resp.text}"
        patched: dict[str, Any] = resp.json()
        return patched

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        resp = self.http.get(self.path(plural, name))
        if resp.status_code == 404:
            return None
        assert resp.status_code == 200, resp.text
        found: dict[str, Any] = resp.json()
        return found

    def objects(self, plural: str) -> list[dict[str, Any]]:
        resp = self.http.get(self.path(plural))
        assert resp.status_code == 200, resp.text
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    items = objects  # the name the provisioning tests use

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        return [
            ev
            for ev in self.objects("events")
            if ev["involvedObject"]["kind"] == kind and ev["involvedObject"]["name"] == name
        ]

    def credential(self, name: str, username: str, password: str) -> None:
        self.create(
            "credentials",
            {"kind": "Credential", "metadata": {"name": name}, "spec": {"username": username, "password": password}},
        )

    def discovery(self, name: str, **spec: Any) -> dict[str, Any]:
        spec.setdefault("schemes", ["http"])
        spec.setdefault("probeTimeoutSeconds", 2.0)
        return self.create("discoveries", {"kind": "Discovery", "metadata": {"name": name}, "spec": spec})

    def wait_for(self, what: str, fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 15.0) -> Any:
        """Poll `fetch` until `done(value)`; fail naming `what` and showing the last value."""
        return poll(what, fetch, done, timeout, show=lambda value: json.dumps(value, indent=1, default=str)[:4000])

    def wait_object(
        self, plural: str, name: str, done: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        found: dict[str, Any] = self.wait_for(
            f"{plural}/{name}", lambda: self.get(plural, name), lambda o: o is not None and done(o), timeout
        )
        return found

    def wait_scanned(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """The discovery once its first scan has finished."""
        return self.wait_object("discoveries", name, lambda d: bool(d["status"].get("lastScanFinished")), timeout)

    def wait_bmc_settled(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """The BMC once the BMC controller has written a Ready condition."""
        return self.wait_object("bmcs", name, lambda b: condition(b, "Ready") is not None, timeout)
