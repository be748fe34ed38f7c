"""Given a provisioner that polls its BMCs only every 60 s, when a DPU is given an image, then it still
reaches Ready in seconds: the BMC pushes its events (the update task done, the DPU powered on) to the
API server's receiver, and each wakes the DPU's provisioning at once instead of at its next poll.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpufleet import plane as manager
from dpufleet.images.repository import ImageRepository
from dpufleet.provisioning.controller import DPUProvisioner
from dpufleet.sim.runner import sim_in_thread
from support.server import RunningServer, threaded_server

from .conftest import FAST, OWNER, Operator, discover, fleet_options, image_doc, upload

pytestmark = pytest.mark.timeout(120)

SLOW_POLL = dataclasses.replace(FAST, poll_seconds=60.0)
PAYLOAD = b"emulated OS 7.0, installed on pushed events\n" * 100


def slow_provisioner(services: manager.Services) -> DPUProvisioner:
    return manager.wire(DPUProvisioner, services, SLOW_POLL, owner=OWNER)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with pytest.MonkeyPatch.context() as mp:
        factories = [f for f in manager.DEFAULT_RECONCILERS if f is not DPUProvisioner] + [slow_provisioner]
        mp.setattr(manager, "DEFAULT_RECONCILERS", factories)
        with threaded_server(tmp_path_factory.mktemp("api")) as running:
            assert running.server is not None
            repo = running.server.services.repository
            assert isinstance(repo, ImageRepository)
            repo.public_url = running.url  # where BMCs fetch images and push their events
            yield running


def test_pushed_bmc_events_drive_provisioning_between_polls(api: RunningServer, tmp_path: Path) -> None:
    with api.client() as http, sim_in_thread(fleet_options(api, tmp_path / "fleet", hosts=1)) as fleet:
        op = Operator(http, "default")
        name = discover(op, fleet)[0]

        def subscribed(bmcs: list[dict[str, object]]) -> bool:
            return bool(bmcs) and all(
                ((b.get("status") or {}).get("eventSubscription") or {}).get("state") == "Subscribed"  # type: ignore[union-attr]
                for b in bmcs
            )

        op.wait_for("the BMCs subscribed to events", lambda: op.items("bmcs"), subscribed, timeout=30)
        assert upload(http, PAYLOAD).status_code == 201
        op.create("images", image_doc("os-7", "7.0", PAYLOAD))
        started = time.monotonic()
        resp = http.patch(
            op.path("dpus", name),
            json={"spec": {"image": "os-7"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status_code == 200, resp.text
        dpu = op.wait_object("dpus", name, lambda d: d["status"].get("phase") == "Ready", timeout=30)
        took = time.monotonic() - started
        assert dpu["status"]["installedImage"] == "os-7"
        # one poll alone would be 60 s; install and reboot would be two of them
        assert took < 30, f"Ready after {took:.1f}s: the pushed events did not wake provisioning"
