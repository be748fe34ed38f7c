"""Given more DPUs asking for an image at once than the controller provisions at a time (max_in_flight),
when they are all given the image, then never more than max_in_flight are in a provisioning phase at
once, the others wait untouched in the order they asked, and every one of them reaches Ready."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import httpx
import pytest

from dpufleet.api.kinds import WORKING_PHASES
from support.server import RunningServer

from .conftest import FAST, Operator, image_doc, provisioning_server, upload

pytestmark = pytest.mark.timeout(120)

CAP = 2


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with provisioning_server(tmp_path_factory.mktemp("api"), dataclasses.replace(FAST, max_in_flight=CAP)) as running:
        yield running


def test_no_more_than_max_in_flight_are_provisioned_at_once_and_all_get_there(
    site: Operator, http: httpx.Client
) -> None:
    data = b"in-flight cap os\n" * 300
    assert upload(http, data).status_code in (200, 201)
    site.create("images", image_doc("capped", "1.0", data))
    names = [d["metadata"]["name"] for d in site.items("dpus")][:6]
    for name in names:
        resp = http.patch(
            site.path("dpus", name),
            json={"spec": {"image": "capped"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status_code == 200, resp.text

    peak, deadline = 0, time.monotonic() + 90
    while time.monotonic() < deadline:
        phases = {d["metadata"]["name"]: (d.get("status") or {}).get("phase") for d in site.items("dpus")}
        peak = max(peak, sum(1 for n in names if phases[n] in WORKING_PHASES))
        assert peak <= CAP, f"{peak} DPUs provisioned at once: {phases}"
        if all(phases[n] == "Ready" for n in names):
            break
        time.sleep(0.02)
    dpus = {d["metadata"]["name"]: d for d in site.items("dpus")}
    assert all(dpus[n]["status"].get("installedImage") == "capped" for n in names), "every DPU got its turn"
    assert peak == CAP, "the cap was used, not undercut"
