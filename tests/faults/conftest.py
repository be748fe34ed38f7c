"""A small emulated fleet whose agents report to a capture server; Redfish read over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dpufleet.sim.faults import clear, injector_for
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from support.net import free_port, wait_until

TIME_SCALE = 0.005  # a 40 s boot takes 0.2 s, the 30 s OS watchdog 0.15 s
HEARTBEAT = 0.05


@dataclass
class Capture:
    """What the agents sent (POST /agent/v1/report) and the events BMCs POSTed (/events)."""

    reports: list[tuple[float, datetime, dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response: Response
        if request.url.path == "/agent/v1/report":
            body = await request.json()
            with self.lock:
                self.reports.append((time.monotonic(), datetime.now(UTC), body))
            response = JSONResponse({"heartbeatSeconds": HEARTBEAT, "inventorySeconds": 300, "object": "x"})
        elif request.url.path == "/events":
            event = await request.json()
            with self.lock:
                self.events.append(event)
            response = Response(status_code=204)
        else:
            response = JSONResponse({"error": "not found"}, status_code=404)
        await response(scope, receive, send)

    def since(self, serial: str, t: float) -> list[dict[str, Any]]:
        with self.lock:
            return [b for (at, _, b) in self.reports if at >= t and b["serial"] == serial]

    def latest(self, serial: str, t: float, pred: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The first report from ``serial`` after ``t`` (carrying an inventory matching ``pred``)."""
        found: dict[str, Any] = {}

        def check() -> bool:
            for body in self.since(serial, t):
                if pred is None or (body.get("inventory") and pred(body)):
                    found.update(body)
                    return True
            return False

        wait_until(check, timeout=10, what=f"a report from {serial}")
        return found

    def silent(self, serial: str, seconds: float = 0.4) -> bool:
        """No report from ``serial`` in the next ``seconds`` (after the in-flight one lands)."""
        time.sleep(0.1)
        start = time.monotonic()
        time.sleep(seconds)
        return not self.since(serial, start)

    def reporting(self, serial: str) -> bool:
        start = time.monotonic()
        wait_until(lambda: bool(self.since(serial, start)), timeout=10, what=f"{serial} to report")
        return True


@dataclass
class Sim:
    running: SimRunning
    capture: Capture
    capture_url: str
    directory: Path

    @property
    def fleet(self) -> Any:
        return self.running.fleet

    def dpu(self, index: int) -> Any:
        return self.fleet.dpus[index]

    def host_of(self, index: int) -> Any:
        dpu = self.dpu(index)
        return next(h for h in self.fleet.hosts if h.id == dpu.host_id)

    def redfish(self, index: int) -> httpx.Client:
        dpu = self.dpu(index)
        url = self.running.servers.endpoints[dpu.id] + "/redfish/v1"
        return httpx.Client(base_url=url, auth=(self.running.username, self.running.password), timeout=2.0)

    def system(self, index: int) -> dict[str, Any]:
        with self.redfish(index) as rf:
            body: dict[str, Any] = rf.get("/Systems/DPU").json()
            return body

    def sel(self, index: int) -> list[dict[str, Any]]:
        with self.redfish(index) as rf:
            members: list[dict[str, Any]] = rf.get("/Managers/BMC/LogServices/SEL/Entries").json()["Members"]
            return members

    def message_ids(self, index: int) -> list[str]:
        return [e["MessageId"] for e in self.sel(index)]

    def wait_running(self, index: int, timeout: float = 10.0) -> None:
        wait_until(
            lambda: (
                self.system(index)["BootProgress"]["LastState"] == "OSRunning"
                and self.system(index)["PowerState"] == "On"
            ),
            timeout=timeout,
            what=f"DPU {index} to run its OS",
        )


@pytest.fixture(scope="package")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    capture = Capture()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(capture.app, host="127.0.0.1", port=port, log_level="warning", interface="asgi3")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: server.started, timeout=10, what="the capture server")
    directory = tmp_path_factory.mktemp("sim")
    options = SimOptions(
        hosts=2,
        dpus_per_host=1,
        seed=7,
        directory=directory,
        time_scale=TIME_SCALE,
        server=url,
        token="capture",
        register=False,
        heartbeat_seconds=HEARTBEAT,
    )
    try:
        with sim_in_thread(options) as running:
            sim = Sim(running, capture, url, directory)
            for dpu in running.fleet.dpus:
                capture.reporting(dpu.serial)
            yield sim
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def healthy(sim: Sim) -> Iterator[None]:
    """Every test starts and ends with no fault, every DPU running its OS."""
    yield
    for dpu in sim.fleet.dpus:
        clear(sim.fleet, dpu.id)
    injector = injector_for(sim.fleet)
    assert injector.active == {}
    for index, dpu in enumerate(sim.fleet.dpus):
        if dpu.power_state.value == "Off" or dpu.boot_progress != "OSRunning":
            with sim.redfish(index) as rf:
                rf.post("/Systems/DPU/Actions/ComputerSystem.Reset", json={"ResetType": "ForceRestart"})
        sim.wait_running(index)
        sim.capture.reporting(dpu.serial)
