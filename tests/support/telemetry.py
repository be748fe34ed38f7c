"""A control plane with its fleet bus, and the real agent on emulated DPUs, for the telemetry tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dpufleet.agent.credentials import EnrollmentOptions
from dpufleet.agent.daemon import Agent, AgentConfig
from dpufleet.api.telemetry import CLASSES_ANNOTATION, TelemetryAssignment
from dpufleet.server.telemetry import TelemetryPlane

from .net import wait_until
from .server import RunningServer, threaded_server

BASE = "/apis/dpufleet.io/v1alpha1/projects"


@dataclass
class Plane:
    api: RunningServer
    agent_url: str
    ca_file: Path
    tmp: Path

    @property
    def telemetry(self) -> TelemetryPlane:
        assert self.api.server is not None and self.api.server.state.telemetry is not None
        return self.api.server.state.telemetry

    def token(self, serial: str, project: str = "default") -> str:
        body = {"serial": serial, "role": "dpu", "expiresSeconds": 3600, "project": project}
        with self.api.client() as http:
            resp = http.post("/enroll/v1/tokens", json=body)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])

    def dpu(self, serial: str, classes: str, project: str = "default", **annotations: str) -> None:
        """The DPU object, created before its agent reports, asking for ``classes``."""
        doc = {
            "kind": "DPU",
            "metadata": {"name": f"dpu-{serial.lower()}", "annotations": {CLASSES_ANNOTATION: classes, **annotations}},
            "spec": {"serialNumber": serial},
        }
        with self.api.client() as http:
            if project != "default":
                http.post(
                    "/apis/dpufleet.io/v1alpha1/projects", json={"kind": "Project", "metadata": {"name": project}}
                )
            resp = http.post(f"{BASE}/{project}/dpus", json=doc)
        assert resp.status_code == 201, resp.text

    def agent(self, serial: str, root: Path, buffer_bytes: int = 1 << 20, project: str = "default") -> Agent:
        config = AgentConfig(
            self.agent_url, None, root, "dpu", serial=serial, state_dir=self.tmp / serial / "state",
            enrollment=EnrollmentOptions(ca_file=self.ca_file, token=self.token(serial, project)),
            telemetry_buffer_bytes=buffer_bytes,
        )  # fmt: skip
        return Agent(config)


@contextmanager
def telemetry_plane(tmp: Path, otlp_endpoint: str | None = None) -> Iterator[Plane]:
    """A control plane (no controllers) running its embedded nats-server, the aggregator connected."""
    with threaded_server(tmp / "data", controllers=False, telemetry_bus="embedded", otlp_endpoint=otlp_endpoint) as api:
        with api.client() as http:
            info = http.get("/enroll/v1/info").json()
        ca_file = tmp / "fleet-ca.crt"
        ca_file.write_text(info["caCertificate"])
        built = Plane(api, info["agentURL"], ca_file, tmp)
        built.telemetry.assignment_ttl = 0.0  # an annotation's change reaches the next report
        wait_until(built.telemetry.connected.is_set, timeout=15, what="the aggregator on the embedded nats-server")
        yield built


class Stream:
    """A `watch` stream read in a thread, its lines kept."""

    def __init__(self, http: httpx.Client, path: str, params: dict[str, Any]) -> None:
        self.lines: list[dict[str, Any]] = []
        self.status: int | None = None
        self.body = ""
        self._thread = threading.Thread(target=self._read, args=(http, path, params), daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait(10)

    def _read(self, http: httpx.Client, path: str, params: dict[str, Any]) -> None:
        try:
            with http.stream("GET", path, params=params, timeout=httpx.Timeout(10, read=30)) as resp:
                self.status = resp.status_code
                if resp.status_code != 200:
                    self.body = resp.read().decode()
                    self._started.set()
                    return
                for line in resp.iter_lines():
                    doc = json.loads(line)
                    self.lines.append(doc)
                    if doc.get("type") == "WATCHING":
                        self._started.set()
        except httpx.HTTPError:
            pass
        finally:
            self._started.set()

    def samples(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "name" in line]


async def report(agent: Agent, serial: str) -> dict[str, object]:
    await agent.secure(serial)
    inventory = await agent.collect()
    return await agent.send(inventory, serial, inventory.hostname)


def assign(agent: Agent, reply: dict[str, object], serial: str, service_logs: Path | None = None) -> None:
    """What Agent.run does with each reply, without starting the loop (the test drives collection)."""
    assignment = TelemetryAssignment.model_validate(reply["telemetry"])
    if agent.telemetry is None:
        agent.telemetry = agent.make_telemetry(serial, service_logs)
        assert agent.telemetry is not None
    agent.telemetry.assign(assignment)
