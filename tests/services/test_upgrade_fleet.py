"""Rolling upgrades on three emulated DPUs whose runtimes run real containers (runc).

- an image upgrade moves one DPU at a time (maxUnavailable 1), each gated on its instance running
  ready at the new revision, and ends with every DPU on it and the old revision kept for undo;
- an upgrade whose instances crash is rolled back after the first failure: one DPU ever ran the bad
  revision, every instance runs the previous one again, and `dpufleet service rollout` says so;
- `dpufleet service undo` after a completed upgrade rolls the previous revision back in.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from dpufleet.cli.main import app
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator
from services.fleet import service, services_fleet
from support.oci import build_archive, served_image, tools_missing
from support.server import RunningServer

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc with cgroup limits needs root"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"not installed: {', '.join(tools_missing())}"),
]
DPUS = 3
STRATEGY = {"maxUnavailable": 1, "maxFailures": 1, "minReadySeconds": 1, "progressDeadlineSeconds": 60}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    where = tmp_path_factory.mktemp("image")
    with served_image(where) as served:
        second = where / "v2"
        second.mkdir()
        archive, sha = build_archive(second, ["/bin/sh", "-c", "sleep 3600"])
        served["v2_url"], served["v2_sha256"] = f"{served['base']}/v2/{archive.name}", sha
        yield served


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    with services_fleet(api, tmp_path_factory.mktemp("fleet"), hosts=DPUS) as running:
        yield running


def cli(api: RunningServer, *args: str) -> tuple[int, str]:
    env = {"DPUFLEET_SERVER": api.url, "DPUFLEET_TOKEN": api.token, "DPUFLEET_PROJECT": "", "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


class Watch:
    """Samples the service's upgrade and what each DPU's runtime reports, until stopped."""

    def __init__(self, site: Operator, name: str) -> None:
        self.site, self.name = site, name
        self.max_in_flight = 0
        self.revisions_seen: dict[str, set[str]] = {}  # revision -> DPUs whose runtime reported it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            doc = self.site.get("dpuservices", self.name) or {}
            upgrade = (doc.get("status") or {}).get("upgrade") or {}
            self.max_in_flight = max(self.max_in_flight, len(upgrade.get("inFlight") or {}))
            for alloc in self.site.objects("dpuallocations"):
                for entry in (alloc.get("status") or {}).get("instances") or []:
                    if entry["service"] == self.name:
                        self.revisions_seen.setdefault(entry["revision"], set()).add(alloc["spec"]["dpu"])
            time.sleep(0.2)


def status_of(site: Operator, name: str) -> dict[str, Any]:
    return (site.get("dpuservices", name) or {}).get("status") or {}


def upgrade_phase(site: Operator, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
    return site.wait_for(  # type: ignore[no-any-return]
        f"the upgrade {phase}",
        lambda: status_of(site, name),
        lambda s: (s.get("upgrade") or {}).get("phase") == phase and s.get("ready") == DPUS,
        timeout=timeout,
    )


def merge(site: Operator, name: str, spec: dict[str, Any]) -> None:
    resp = site.http.patch(
        site.path("dpuservices", name), json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text


def test_an_image_upgrade_rolls_one_dpu_at_a_time_and_a_crashing_one_rolls_back(
    site: Operator, api: RunningServer, image: dict[str, str]
) -> None:
    site.create("dpuservices", service("web", image, "echo v1; sleep 3600", upgrade=STRATEGY))
    first = upgrade_phase(site, "web", "Complete")
    v1 = first["upgrade"]["currentRevision"]
    assert {i["revision"] for i in first["instances"]} == {v1.partition(".")[0]}

    with Watch(site, "web") as watch:
        merge(site, "web", {"artifact": {"ociArchive": {"url": image["v2_url"], "sha256": image["v2_sha256"]}}})
        done = site.wait_for(
            "the upgrade complete at a new revision",
            lambda: status_of(site, "web"),
            lambda s: (s.get("upgrade") or {}).get("currentRevision") not in (None, v1) and s.get("ready") == DPUS,
            timeout=120,
        )
    v2 = done["upgrade"]["currentRevision"]
    assert done["upgrade"]["phase"] == "Complete" and done["upgrade"]["previousRevision"] == v1
    assert {i["revision"] for i in done["instances"]} == {v2.partition(".")[0]}
    assert watch.max_in_flight == 1  # never two DPUs at once
    reasons = [e["reason"] for e in site.events("DPUService", "web")]
    assert reasons.count("Upgrading") == DPUS and "Upgraded" in reasons
    code, out = cli(api, "service", "rollout", "web")
    assert code == 0 and f"Complete - {DPUS} instance(s) at revision {v2[:8]}" in out

    with Watch(site, "web") as watch:
        merge(site, "web", {"config": {"args": ["/bin/sh", "-c", "echo v3; sleep 0.3; exit 3"]}})
        rolled = upgrade_phase(site, "web", "RolledBack")
        time.sleep(1)  # what the runtimes report once they are back
    upgrade = rolled["upgrade"]
    bad = upgrade["rolledBackRevision"].partition(".")[0]
    assert len(watch.revisions_seen.get(bad, set())) == 1  # only the first DPU ever ran it
    assert upgrade["currentRevision"] == v2 and len(upgrade["failed"]) == 1
    assert {i["revision"] for i in rolled["instances"]} == {v2.partition(".")[0]}
    assert all(i["phase"] == "Running" for i in rolled["instances"])
    condition = next(c for c in rolled["conditions"] if c["type"] == "Upgraded")
    assert condition["status"] == "False" and condition["reason"] == "RolledBack"
    warning = next(e for e in site.events("DPUService", "web") if e["reason"] == "RolledBack")
    assert warning["type"] == "Warning" and "back on revision" in warning["message"]
    code, out = cli(api, "service", "rollout", "web", "--watch", "--timeout", "5")
    assert code == 1 and "RolledBack" in out and "failed" in out

    code, out = cli(api, "service", "undo", "web")  # the spec goes back to what runs: nothing restarts
    assert code == 0 and f"returning to revision {v2[:8]}" in out, out
    back = upgrade_phase(site, "web", "Complete", timeout=30)
    assert back["upgrade"]["currentRevision"] == v2
    assert all(i["restarts"] == 0 for i in back["instances"])

    code, out = cli(api, "service", "undo", "web")  # after a completed upgrade: the previous revision
    assert code == 0 and f"returning to revision {v1[:8]}" in out, out
    site.wait_for(
        "the previous image back everywhere",
        lambda: status_of(site, "web"),
        lambda s: (s.get("upgrade") or {}).get("currentRevision") == v1 and s.get("ready") == DPUS,
        timeout=120,
    )
    spec = (site.get("dpuservices", "web") or {})["spec"]
    assert spec["artifact"]["ociArchive"]["sha256"] == image["sha256"]
