"""The fixtures the services tests on an emulated fleet share, each started once per module: the test
image served on loopback, the control plane, and the provisioned site. A module that needs another
(`fleet` always, a second image, a function-scoped API) defines its own, which takes precedence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator, provisioning_server
from services.fleet import provision
from support.oci import served_image
from support.server import RunningServer


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with served_image(tmp_path_factory.mktemp("image")) as served:
        yield served


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with provisioning_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def site(api: RunningServer, fleet: SimRunning) -> Iterator[Operator]:
    yield from provision(api, fleet)
