"""The handoff a service declares: what is refused, and what makes a new revision."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dpufleet.api.kinds import DPUServiceSpec
from dpufleet.services.desired import desired_instance, revisions, template_of

BASE: dict[str, Any] = {
    "artifact": {"ociArchive": {"url": "http://127.0.0.1:1/a.tar", "sha256": "a" * 64}},
    "placement": {"mode": "EveryDPU"},
}


def spec(**more: Any) -> DPUServiceSpec:
    return DPUServiceSpec.model_validate({**BASE, **more})


@pytest.mark.parametrize(
    ("handoff", "more", "said"),
    [
        ({"listen": []}, {}, "handoff.listen"),
        ({"listen": [8080, 8080]}, {}, "listed more than once"),
        ({"listen": [0]}, {}, "1..65535"),
        ({"listen": [8080], "maxStateMiB": 0}, {}, "handoff.maxStateMiB"),
        ({"listen": [8080]}, {"privileged": True}, "not for a privileged service"),
    ],
)
def test_a_bad_handoff_is_refused_naming_the_field(handoff: dict[str, Any], more: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(handoff=handoff, **more)
    assert said in str(caught.value)


def test_a_handoff_is_part_of_the_revision_and_reaches_the_dpu() -> None:
    plain, stateful = spec(), spec(handoff={"listen": [8080]})
    assert revisions(plain) != revisions(stateful)
    assert revisions(plain) == revisions(spec())  # services without one keep the revisions they had
    assert template_of(stateful)["handoff"]["listen"] == [8080]
    desired = desired_instance("tally", "tally/dpu-1", stateful)
    assert desired.handoff is not None and desired.handoff.listen == [8080] and desired.handoff.timeoutSeconds == 30


@pytest.mark.parametrize(
    ("more", "said"),
    [
        ({"config": {"args": ["queues 8"]}}, "name=value"),
        ({"config": {"env": {"A": "1"}}}, "config.env: not for a kernel module"),
        ({"handoff": {"listen": [80]}}, "handoff: not for a kernel module"),
        ({"probes": {"readiness": {"tcp": {"port": 80}}}}, "probes.readiness: not for a kernel module"),
    ],
)
def test_a_kernel_module_takes_parameters_only(more: dict[str, Any], said: str) -> None:
    module = {"kernelModule": {"url": "http://127.0.0.1:1/m.ko", "sha256": "b" * 64, "name": "m"}}
    assert spec(artifact=module, config={"args": ["queues=8"]}).config.args == ["queues=8"]
    with pytest.raises(ValidationError) as caught:
        spec(artifact=module, **more)
    assert said in str(caught.value)
