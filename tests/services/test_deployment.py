"""DPUDeployment: the bundle's OS rolls first (its DPUSet), then its services, dependsOn renamed to the
bundle's own DPUServices; a service dropped from the bundle goes; deleting the bundle deletes it all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpufleet.api.errors import Invalid, NotFound
from dpufleet.plane import Services
from dpufleet.security.policy import SubAction, Verb, sensitive_actions
from dpufleet.services.deployment import visit
from dpufleet.store.store import Store, default_sqlite_url

P = "default"
SHA = "d" * 64


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(default_sqlite_url(tmp_path))
    Services(opened)
    try:
        yield opened
    finally:
        opened.close()


def bundle(image: str = "os-1", sha: str = SHA, **services: dict[str, Any]) -> dict[str, Any]:
    art = {"image": {"reference": f"repo/storage@sha256:{sha}"}}
    return {
        "selector": {"matchLabels": {"rack": "r1"}},
        "dpuSet": {"template": {"image": image}, "strategy": {"maxUnavailable": "10%"}},
        "services": services
        or {
            "storage": {"artifact": art, "resources": {"memoryMiB": 128}},
            "agent": {"artifact": art, "dependsOn": [{"service": "storage"}]},
        },
    }


def os_rolled_out(store: Store) -> None:
    """What the DPUSet controller says once every DPU runs the template (not under test here)."""
    dpuset = store.get("DPUSet", "edge", P)
    store.update_status(
        "DPUSet", "edge", {"phase": "Complete", "observedGeneration": dpuset["metadata"]["generation"]}, P
    )


def running_everywhere(store: Store, name: str) -> None:
    doc = store.get("DPUService", name, P)
    status = {"desired": 2, "running": 2, "observedGeneration": doc["metadata"]["generation"],
              "upgrade": {"phase": "Complete", "currentRevision": "a.b", "updateRevision": "a.b"}}  # fmt: skip
    store.update_status("DPUService", name, status, P)


def status(store: Store) -> dict[str, Any]:
    result: dict[str, Any] = store.get("DPUDeployment", "edge", P)["status"]
    return result


def test_the_os_rolls_first_then_the_services_in_their_order(store: Store) -> None:
    store.create({"kind": "DPUDeployment", "metadata": {"name": "edge"}, "spec": bundle()})
    assert visit(store, P, "edge")
    dpuset = store.get("DPUSet", "edge", P)
    assert dpuset["spec"]["template"]["image"] == "os-1" and dpuset["spec"]["selector"]["matchLabels"] == {"rack": "r1"}
    assert dpuset["metadata"]["ownerReferences"][0]["kind"] == "DPUDeployment"
    assert store.list("DPUService", P).items == []  # the OS first
    assert status(store)["phase"] == "RollingOS"
    assert status(store)["services"]["agent"]["upgrade"] == "WaitingForOS"

    os_rolled_out(store)
    assert visit(store, P, "edge")
    agent = store.get("DPUService", "edge-agent", P)
    assert [d["service"] for d in agent["spec"]["dependsOn"]] == ["edge-storage"]
    placement = agent["spec"]["placement"]
    assert placement["mode"] == "EveryDPU" and placement["selector"]["matchLabels"] == {"rack": "r1"}
    assert agent["metadata"]["labels"]["dpufleet.io/deployment"] == "edge"
    assert status(store)["phase"] == "Deploying" and status(store)["servicesReady"] == "0/2"

    for name in ("edge-storage", "edge-agent"):
        running_everywhere(store, name)
    rv = store.get("DPUService", "edge-agent", P)["metadata"]["resourceVersion"]
    assert not visit(store, P, "edge")
    assert store.get("DPUService", "edge-agent", P)["metadata"]["resourceVersion"] == rv  # nothing to write
    assert status(store)["phase"] == "Ready" and status(store)["servicesReady"] == "2/2"
    ready = next(c for c in status(store)["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_a_new_bundle_holds_its_services_until_the_new_os_is_out(store: Store) -> None:
    store.create({"kind": "DPUDeployment", "metadata": {"name": "edge"}, "spec": bundle()})
    visit(store, P, "edge")
    os_rolled_out(store)
    visit(store, P, "edge")
    doc = store.get("DPUDeployment", "edge", P)
    store.update({**doc, "spec": bundle(image="os-2", sha="e" * 64)})
    visit(store, P, "edge")
    assert store.get("DPUSet", "edge", P)["spec"]["template"]["image"] == "os-2"
    storage = store.get("DPUService", "edge-storage", P)
    assert storage["spec"]["artifact"]["image"]["reference"].endswith(SHA)  # not yet: the OS rolls first
    assert status(store)["phase"] == "RollingOS"
    os_rolled_out(store)
    visit(store, P, "edge")
    storage = store.get("DPUService", "edge-storage", P)
    assert storage["spec"]["artifact"]["image"]["reference"].endswith("e" * 64)


def test_a_service_dropped_from_the_bundle_goes_and_deleting_the_bundle_deletes_it_all(store: Store) -> None:
    store.create({"kind": "DPUDeployment", "metadata": {"name": "edge"}, "spec": bundle()})
    visit(store, P, "edge")
    os_rolled_out(store)
    visit(store, P, "edge")
    doc = store.get("DPUDeployment", "edge", P)
    only = {"storage": bundle()["services"]["storage"]}
    store.update({**doc, "spec": {**bundle(), "services": only}})
    visit(store, P, "edge")
    assert [s["metadata"]["name"] for s in store.list("DPUService", P).items] == ["edge-storage"]
    store.delete("DPUDeployment", "edge", P)
    with pytest.raises(NotFound):
        store.get("DPUSet", "edge", P)
    assert store.list("DPUService", P).items == []


@pytest.mark.parametrize(
    ("services", "words"),
    [
        (
            {"x": {"artifact": {"image": {"reference": f"r/x@sha256:{SHA}"}}, "placement": {"replicas": 1}}},
            "runs on every selected DPU",
        ),
        ({"x": {"artifact": {}}}, "exactly one of image"),
        (
            {"x": {"artifact": {"image": {"reference": f"r/x@sha256:{SHA}"}}, "dependsOn": [{"service": "x"}]}},
            "cannot depend on itself",
        ),
    ],
)
def test_a_bad_bundle_names_the_service_and_the_problem(store: Store, services: dict[str, Any], words: str) -> None:
    with pytest.raises(Invalid) as err:
        store.create({"kind": "DPUDeployment", "metadata": {"name": "bad"}, "spec": {**bundle(), "services": services}})
    assert "spec.services" in str(err.value) and words in str(err.value)


def test_a_privileged_service_in_a_bundle_is_the_admin_only_sub_action() -> None:
    plain = {"spec": bundle()}
    privileged = {
        "spec": bundle(storage={"artifact": {"image": {"reference": f"r/x@sha256:{SHA}"}}, "privileged": True})
    }
    assert SubAction.PRIVILEGED_SERVICE in sensitive_actions("DPUDeployment", Verb.CREATE, None, privileged)
    assert SubAction.PRIVILEGED_SERVICE not in sensitive_actions("DPUDeployment", Verb.CREATE, None, plain)
    assert SubAction.IMAGE_FLASH in sensitive_actions("DPUDeployment", Verb.CREATE, None, plain)


def test_each_change_is_a_revision_and_a_spec_seen_again_takes_the_next_number(store: Store) -> None:
    store.create({"kind": "DPUDeployment", "metadata": {"name": "edge"}, "spec": bundle()})
    visit(store, P, "edge")
    visit(store, P, "edge")  # a visit that sees the same spec numbers nothing
    assert status(store)["revision"] == 1 and len(status(store)["history"]) == 1
    doc = store.get("DPUDeployment", "edge", P)
    store.update({**doc, "spec": bundle(image="os-2")})
    visit(store, P, "edge")
    assert status(store)["revision"] == 2
    assert [h["spec"]["dpuSet"]["template"]["image"] for h in status(store)["history"]] == ["os-1", "os-2"]

    doc = store.get("DPUDeployment", "edge", P)  # what `dpufleet deployment undo` writes: revision 1's spec
    store.update({**doc, "spec": status(store)["history"][0]["spec"]})
    visit(store, P, "edge")
    assert status(store)["revision"] == 3
    assert [(h["revision"], h["spec"]["dpuSet"]["template"]["image"]) for h in status(store)["history"]] == [
        (2, "os-2"),
        (3, "os-1"),
    ]
    assert store.get("DPUSet", "edge", P)["spec"]["template"]["image"] == "os-1"


def test_the_history_keeps_the_last_revisions(store: Store) -> None:
    from dpufleet.services.deployment import HISTORY

    store.create({"kind": "DPUDeployment", "metadata": {"name": "edge"}, "spec": bundle(image="os-0")})
    visit(store, P, "edge")
    for i in range(1, HISTORY + 3):
        doc = store.get("DPUDeployment", "edge", P)
        store.update({**doc, "spec": bundle(image=f"os-{i}")})
        visit(store, P, "edge")
    history = status(store)["history"]
    assert len(history) == HISTORY and history[-1]["revision"] == HISTORY + 3
    assert history[0]["revision"] == 4  # the oldest went


def test_a_paused_bundle_holds_its_os_rollout_and_its_services_upgrades(store: Store) -> None:
    store.create({"kind": "DPUDeployment", "metadata": {"name": "edge"}, "spec": bundle()})
    visit(store, P, "edge")
    os_rolled_out(store)
    visit(store, P, "edge")
    for name in ("edge-storage", "edge-agent"):
        assert store.get("DPUService", name, P)["spec"]["upgrade"]["paused"] is False
        running_everywhere(store, name)
    visit(store, P, "edge")
    assert status(store)["phase"] == "Ready"

    doc = store.get("DPUDeployment", "edge", P)
    store.update({**doc, "spec": {**bundle(image="os-2", sha="e" * 64), "paused": True}})
    assert not visit(store, P, "edge")  # nothing to look again at: it waits for a resume
    dpuset = store.get("DPUSet", "edge", P)
    assert dpuset["spec"]["paused"] is True and dpuset["spec"]["template"]["image"] == "os-2"
    assert status(store)["phase"] == "Paused" and status(store)["revision"] == 2
    ready = next(c for c in status(store)["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "deployment resume edge" in ready["message"]

    os_rolled_out(store)  # what was under way finished: the services get the new spec, paused
    visit(store, P, "edge")
    storage = store.get("DPUService", "edge-storage", P)
    assert storage["spec"]["artifact"]["image"]["reference"].endswith("e" * 64)
    assert storage["spec"]["upgrade"]["paused"] is True

    doc = store.get("DPUDeployment", "edge", P)
    store.update({**doc, "spec": {**doc["spec"], "paused": False}})
    visit(store, P, "edge")
    assert status(store)["revision"] == 2  # resuming is no new revision
    assert store.get("DPUSet", "edge", P)["spec"]["paused"] is False
    os_rolled_out(store)  # the DPUSet controller has seen its spec change (its generation moved)
    visit(store, P, "edge")
    assert store.get("DPUService", "edge-storage", P)["spec"]["upgrade"]["paused"] is False
