"""A control plane SIGKILLed in the middle of a service's rolling upgrade resumes it where it was.

The server (with its controllers) runs as a child process on SQLite; the DPUs' runtimes are played
at the store (each DPU reports, a second after it is told, the revision its desired set names:
`services/desired.py`, as the agent protocol serves it). The real-container path is
tests/services/test_upgrade_fleet.py; this one is about the kill:

- the upgrade's state survives the SIGKILL (held + in flight + updated are every DPU);
- after the restart the upgrade completes, never more than maxUnavailable DPUs off the current
  revision at once and never an instance placed twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpufleet.api.agent_services import InstanceReport, ServiceReport
from dpufleet.runtime.events import EventRecorder
from dpufleet.services.desired import desired_services
from dpufleet.services.reports import record_service_report
from dpufleet.store.store import Store, default_sqlite_url
from services.test_scheduler_store import add_dpu
from support.net import wait_until
from support.server import ServerProcess, start_server_process

pytestmark = pytest.mark.timeout(240)
P = "default"
DPUS = [f"dpu-{i}" for i in range(6)]
MAX_UNAVAILABLE = 2
REPORT_DELAY = 1.0  # a DPU runs what it is told this long after it is told


def spec(sha: str) -> dict[str, Any]:
    return {
        "artifact": {"ociArchive": {"url": "http://127.0.0.1:9/web.tar", "sha256": sha}},
        "placement": {"mode": "EveryDPU"},
        "upgrade": {"maxUnavailable": MAX_UNAVAILABLE, "minReadySeconds": 0, "progressDeadlineSeconds": 120},
    }


class Runtimes:
    """Every DPU's runtime, played at the store: it reports Running and ready at the revision it is told."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.told: dict[str, tuple[str, float]] = {}
        self.measuring = False
        self.errors: list[str] = []
        self.max_unavailable = 0
        self.placements: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Runtimes:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        events = EventRecorder(self.store, "test-runtime")
        while not self._stop.is_set():
            try:
                self._turn(events)
            except Exception as exc:  # the test says what broke, rather than hang
                self.errors.append(repr(exc))
                return
            time.sleep(0.2)

    def _turn(self, events: EventRecorder) -> None:
        now = time.monotonic()
        for dpu in DPUS:
            wanted = desired_services(self.store, P, dpu).instances
            self.placements.append(len(wanted))
            if not wanted:
                continue
            (instance,) = wanted
            told = self.told.get(dpu)
            if told is None or told[0] != instance.revision:
                self.told[dpu] = told = (instance.revision, now)
            if now - told[1] < REPORT_DELAY:
                continue
            report = InstanceReport(
                service="web",
                instance=instance.instance,
                revision=instance.revision,
                configRevision=instance.configRevision,
                phase="Running",
                ready=True,
            )
            record_service_report(self.store, events, P, dpu, ServiceReport(instances=[report]))
        if self.measuring:  # DPUs told a new revision that do not run it yet: unavailable
            busy = sum(1 for _, since in self.told.values() if now - since < REPORT_DELAY)
            self.max_unavailable = max(self.max_unavailable, busy)


def upgrade_of(store: Store) -> dict[str, Any]:
    return (store.get("DPUService", "web", P).get("status") or {}).get("upgrade") or {}


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    data_dir = tmp_path / "data"
    server = start_server_process(data_dir)  # creates and migrates the store
    server.stop()
    store = Store.open(default_sqlite_url(data_dir))
    try:
        for i, dpu in enumerate(DPUS):
            add_dpu(store, dpu, host=f"host-{i}")
        yield data_dir, store
    finally:
        store.close()


def test_a_control_plane_killed_mid_upgrade_resumes_it(plane: tuple[Path, Store]) -> None:
    data_dir, store = plane
    servers: list[ServerProcess] = [start_server_process(data_dir)]
    try:
        with Runtimes(store) as runtimes:
            store.create({"kind": "DPUService", "metadata": {"name": "web"}, "spec": spec("a" * 64)})
            wait_until(
                lambda: (
                    upgrade_of(store).get("phase") == "Complete"
                    and (store.get("DPUService", "web", P)["status"].get("ready") == len(DPUS))
                ),
                timeout=60,
                what="web running everywhere",
            )
            first = upgrade_of(store)["currentRevision"]
            doc = store.get("DPUService", "web", P)
            runtimes.measuring = True
            store.update({**doc, "spec": spec("b" * 64)})
            wait_until(
                lambda: len(upgrade_of(store).get("updated") or []) >= 1 and upgrade_of(store).get("held"),
                timeout=60,
                what="the upgrade part-way",
            )
            servers[0].kill()
            during = upgrade_of(store)
            tracked = {*during["held"], *during["inFlight"], *during["updated"]}
            assert during["phase"] == "Progressing" and tracked == set(DPUS)
            time.sleep(2 * REPORT_DELAY)  # the DPUs go on while the control plane is down
            servers.append(start_server_process(data_dir))
            wait_until(
                lambda: upgrade_of(store).get("phase") == "Complete" and upgrade_of(store)["currentRevision"] != first,
                timeout=90,
                what="the upgrade completed after the restart",
            )
        assert not runtimes.errors
        done = upgrade_of(store)
        assert done["previousRevision"] == first
        assert 1 <= runtimes.max_unavailable <= MAX_UNAVAILABLE
        assert max(runtimes.placements) == 1  # never two instances of web on one DPU
        reasons = [e["reason"] for e in store.list("Event", P).items if e["involvedObject"]["name"] == "web"]
        assert reasons.count("UpgradeStarted") == 1 and "Upgraded" in reasons
    finally:
        for server in servers:
            server.stop()
