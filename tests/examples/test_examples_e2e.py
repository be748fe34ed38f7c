"""Given the two emulated racks examples/README.md starts, when a user applies examples/fleet/ and then
examples/ (with their site's password and ports, as the README says), then every object is accepted
and does what its example says: the Discovery finds its BMCs, the DPUSet rolls its image out to every
DPU it selects, the hand-registered BMC and the scan adopt the second rack, the update request and the
power action finish, and the kinds no controller acts on are stored and read back as written.

A kind of the registry with no check here fails the test: a new kind needs an example and a check."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dpufleet.api.kinds import REGISTRY, lookup
from dpufleet.api.validation import validate_document
from dpufleet.cli.apply import Manifest
from dpufleet.main import app
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from provisioning.conftest import Operator, condition, is_true, provisioning_server, upload
from support.net import free_port
from support.server import RunningServer

from .manifests import PAYLOAD, Site, by_kind, manifests, site_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SETTLE = 90.0  # seconds any one example may take to reconcile on this shared machine


def two_free_ports() -> int:
    """A port p with p and p + 1 free (the second rack serves one BMC per port from p)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free loopback ports")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with provisioning_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def op(api: RunningServer) -> Iterator[Operator]:
    with api.client() as http:
        yield Operator(http, "default")


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    """`dpufleet sim up --hosts 2 --dpus-per-host 2 --listen 127.0.0.1:PORT --no-register` (agents on)."""
    options = SimOptions(
        hosts=2,
        dpus_per_host=2,
        seed=1,
        directory=tmp_path_factory.mktemp("fleet"),
        port=free_port(),
        time_scale=0.005,
        server=api.url,
        token=api.token,
        register=False,
        agents=True,
        heartbeat_seconds=1.0,
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def rack2(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    """`dpufleet sim up --hosts 1 --dpus-per-host 2 --profile intel-ipu-e2100 --seed 2 --per-bmc-ports
    --listen 127.0.0.1:PORT --no-register --no-agents`."""
    options = SimOptions(
        hosts=1,
        dpus_per_host=2,
        profiles=["intel-ipu-e2100"],
        seed=2,
        directory=tmp_path_factory.mktemp("rack2"),
        port=two_free_ports(),
        per_bmc_ports=True,
        time_scale=0.005,
        server=api.url,
        token=api.token,
        register=False,
        agents=False,
    )
    with sim_in_thread(options) as running:
        yield running


def port_of(running: SimRunning) -> int:
    return int(running.endpoints[0].split(":")[2].split("/")[0])


@pytest.fixture(scope="module")
def examples(fleet: SimRunning, rack2: SimRunning, tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = Site(port_of(fleet), fleet.password, port_of(rack2), rack2.password)
    return site_copy(site, tmp_path_factory.mktemp("site"))


def apply(api: RunningServer, path: Path) -> list[Manifest]:
    """`dpufleet apply -f PATH` as a user runs it: one line per document, in order, each created (or
    configured: the host agents may have made their Host first); the documents it applied."""
    env = {"DPUFLEET_SERVER": api.url, "DPUFLEET_TOKEN": api.token, "DPUFLEET_PROJECT": "", "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["apply", "-f", str(path)], env=env)
    assert result.exit_code == 0, result.output
    docs = manifests(path)
    lines = result.stdout.splitlines()
    assert len(lines) == len(docs), result.stdout
    for line, manifest in zip(lines, docs, strict=True):
        name = f"{lookup(manifest.doc['kind']).singular}/{manifest.doc['metadata']['name']}"
        assert line in (f"{name} created", f"{name} configured"), f"{manifest.label}: {line}"
    return docs


def written(example: Any, normal: Any, found: Any, where: str) -> None:
    """Every field the example sets is stored with the example's value, as validation normalises it
    (5m is 300.0 seconds); the server's defaults for fields an example leaves out are not compared."""
    if isinstance(example, dict):
        assert isinstance(found, dict), f"{where}: {found!r}"
        for key, value in example.items():
            assert key in found, f"{where}.{key}: not stored"
            written(value, normal[key], found[key], f"{where}.{key}")
    elif isinstance(example, list):
        assert isinstance(found, list) and len(found) == len(example), f"{where}: {found!r}, example: {example!r}"
        for index, (value, stored) in enumerate(zip(example, found, strict=True)):
            written(value, normal[index], stored, f"{where}[{index}]")
    else:
        assert found == normal, f"{where}: stored {found!r}, the example says {example!r}"


def stored_as_written(op: Operator, doc: dict[str, Any]) -> dict[str, Any]:
    """The object the document made, read back as written (a secret reads back only as <field>Set)."""
    info, normal = validate_document(doc)
    project = doc["metadata"].get("project", "default")
    found = Operator(op.http, project).get(info.plural, doc["metadata"]["name"])
    label = f"{doc['kind']}/{doc['metadata']['name']}"
    assert found is not None, f"{label} was not stored"
    spec = dict(doc.get("spec") or {})
    for secret in info.secret_fields:
        if spec.pop(secret, None) is not None:
            assert secret not in found["spec"] and found["spec"][f"{secret}Set"] is True, f"{label}: {secret}"
    written(spec, normal.get("spec"), found.get("spec") or {}, f"{label}: spec")
    labels = doc["metadata"].get("labels") or {}
    written(labels, labels, found["metadata"]["labels"], f"{label}: metadata.labels")
    for key in info.extra_fields:
        if key in doc:
            written(doc[key], normal[key], found[key], f"{label}: {key}")
    return found


def dpu_names(running: SimRunning) -> list[str]:
    return sorted(f"dpu-{d.serial.lower()}" for d in running.fleet.dpus)


# --- examples/fleet/ --------------------------------------------------------------------------------------


def test_the_fleet_is_discovered_inventoried_paired_and_rolled_out(
    api: RunningServer, op: Operator, fleet: SimRunning, examples: Path
) -> None:
    assert upload(op.http, PAYLOAD.read_bytes()).status_code in (200, 201)
    docs = apply(api, examples / "fleet")
    kinds = by_kind(docs)
    for doc in (m.doc for m in docs):
        stored_as_written(op, doc)

    (discovery,) = kinds["Discovery"]
    op.wait_object(
        "discoveries",
        discovery["metadata"]["name"],
        lambda d: d["status"].get("redfishFound") == len(fleet.endpoints) and is_true(d, "Ready"),
        timeout=SETTLE,
    )
    names = dpu_names(fleet)
    assert sorted(d["metadata"]["name"] for d in kinds["DPU"]) == names, "15-dpus.yaml: the serials of seed 1"
    (dpuset,) = kinds["DPUSet"]
    template = dpuset["spec"]["template"]
    done = op.wait_object(
        "dpusets",
        dpuset["metadata"]["name"],
        lambda s: s["status"].get("phase") == "Complete" and s["status"].get("updated") == len(names),
        timeout=SETTLE,
    )
    assert done["status"]["dpus"] == len(names) and done["status"]["failed"] == 0
    by_name = {d["metadata"]["name"]: d for d in op.objects("dpus")}
    for name in names:
        status = by_name[name]["status"]
        assert status["phase"] == "Ready", name
        assert status["installedImage"] == template["image"] and status["appliedFlavor"] == template["flavor"], name
    # the declared hosts are the ones the host agents report for: each holds its two DPUs
    for host in kinds["Host"]:
        paired = op.wait_object(
            "hosts", host["metadata"]["name"], lambda h: len(h["status"].get("dpus") or []) == 2, timeout=SETTLE
        )
        assert set(paired["status"]["dpus"]) <= set(names)
        assert paired["spec"]["hostPolicy"] == host["spec"]["hostPolicy"]


# --- examples/*.yaml: one per kind ------------------------------------------------------------------------

Check = Callable[[Operator, dict[str, Any], SimRunning], None]


def _stored(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)


def _bmc(op: Operator, doc: dict[str, Any], rack2: SimRunning) -> None:
    bmc = op.wait_object(
        "bmcs", doc["metadata"]["name"], lambda b: is_true(b, "Ready") and bool(b["status"].get("dpus")), SETTLE
    )
    assert bmc["status"]["reachable"] is True and bmc["status"]["vendor"] == "Intel"
    assert set(bmc["status"]["dpus"]) <= set(dpu_names(rack2))


def _discovery(op: Operator, doc: dict[str, Any], rack2: SimRunning) -> None:
    scan = op.wait_object(
        "discoveries", doc["metadata"]["name"], lambda d: bool(d["status"].get("lastScanFinished")), SETTLE
    )
    assert scan["status"]["probed"] == len(doc["spec"]["ports"]) and scan["status"]["redfishFound"] == 1
    expected = doc["spec"]["expectedSerials"]
    op.wait_for(
        "the scan's BMC adopted, with the DPU the example expects",
        lambda: [b for b in op.objects("bmcs") if b["metadata"]["name"] != "rack2-dpu-1"],
        lambda bmcs: any(f"dpu-{expected[0].lower()}" in (b["status"].get("dpus") or []) for b in bmcs),
        SETTLE,
    )


def _dpu(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)
    dpu = op.wait_object("dpus", doc["metadata"]["name"], lambda d: bool(d["status"].get("firmware")), SETTLE)
    assert dpu["status"]["serialNumber"] == doc["spec"]["serialNumber"], "the declared DPU is the one found"
    assert dpu["metadata"]["labels"]["rack"] == doc["metadata"]["labels"]["rack"]


def _dpuset(op: Operator, doc: dict[str, Any], rack2: SimRunning) -> None:
    stored_as_written(op, doc)
    done = op.wait_object(
        "dpusets",
        doc["metadata"]["name"],
        lambda s: s["status"].get("updated", 0) >= doc["spec"]["strategy"]["canary"],
        SETTLE,
    )
    assert done["status"]["dpus"] == 1, "the canary set leaves dpu.yaml's DPU (rack r2) out"


def _updaterequest(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)
    done = op.wait_object(
        "updaterequests",
        doc["metadata"]["name"],
        lambda r: r["status"].get("phase") in ("Succeeded", "Failed", "Refused"),
        SETTLE,
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    dpu = op.get("dpus", doc["spec"]["dpu"])
    assert dpu is not None and dpu["status"]["installedImage"] == doc["spec"]["image"]


def _poweraction(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)
    done = op.wait_object(
        "poweractions", doc["metadata"]["name"], lambda a: a["status"].get("phase") in ("Succeeded", "Failed"), SETTLE
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["hostImpact"].startswith(doc["spec"]["mode"])


def _credential(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored = stored_as_written(op, doc)
    assert "password" not in stored["spec"]


def _image(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)


def _event(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)
    assert any(
        e["reason"] == doc["reason"] for e in op.events(doc["involvedObject"]["kind"], doc["involvedObject"]["name"])
    )


def _dpuservice(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)
    seen = op.wait_object("dpuservices", doc["metadata"]["name"], lambda s: bool(s["status"].get("conditions")), SETTLE)
    assert seen["status"]["desired"] == doc["spec"]["placement"]["replicas"]
    assert seen["status"]["running"] == 0, "placed, not run: the emulated rack's DPUs run no runtime (sim --services)"


def _ipam(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    name = doc["metadata"]["name"]
    seen = op.wait_object(
        "dpuserviceipams", name, lambda i: is_true(i, "Ready") and i["status"]["allocated"] > 0, SETTLE
    )
    record = op.get("ipamallocations", name)
    assert record is not None, "the allocator records the blocks it hands out"
    blocks = [b["ipv4"] for b in record["spec"]["blocks"]]
    assert len(blocks) == seen["status"]["allocated"] == len(set(blocks)), "a block per DPU, none shared"


def _chain(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    seen = op.wait_object(
        "dpuservicechains", doc["metadata"]["name"], lambda c: c["status"].get("selected", 0) > 0, SETTLE
    )
    ready = condition(seen, "Ready")
    assert ready is not None and ready["status"] == "False", "no DPU of the example racks runs a switch (sim --network)"
    assert seen["status"]["programmed"] == 0


def _deployment(op: Operator, doc: dict[str, Any], _rack2: SimRunning) -> None:
    stored_as_written(op, doc)
    name = doc["metadata"]["name"]
    seen = op.wait_object("dpudeployments", name, lambda d: d["status"].get("servicesReady") is not None, SETTLE)
    assert seen["status"]["phase"] == "Deploying" and seen["status"]["servicesReady"] == "0/2", "no DPU runs them"
    agent = op.get("dpuservices", f"{name}-agent")
    assert agent is not None and [d["service"] for d in agent["spec"]["dependsOn"]] == [f"{name}-spdk"]
    assert agent["spec"]["placement"]["selector"]["matchLabels"] == doc["spec"]["selector"]["matchLabels"]


CHECKS: dict[str, Check] = {
    "Host": _stored,
    "BMC": _bmc,
    "DPU": _dpu,
    "Image": _image,
    "DPUFlavor": _stored,
    "DPUSet": _dpuset,
    "Credential": _credential,
    "Discovery": _discovery,
    "Project": _stored,
    "Publisher": _stored,
    "Event": _event,
    "RemediationPolicy": _stored,
    "PowerAction": _poweraction,
    "UpdateRequest": _updaterequest,
    "DPUService": _dpuservice,
    "DPUDeployment": _deployment,
    "DPUAllocation": _stored,
    "DPUServiceIPAM": _ipam,
    "IPAMAllocation": _stored,
    "DPUServiceInterface": _stored,
    "DPUServiceChain": _chain,
    "AlertRule": _stored,  # evaluated by the telemetry plane, which this server does not run: tests/telemetry/
    "AlertSilence": _stored,  # read by the alert evaluator of the telemetry plane: tests/telemetry/test_alerts.py
}


def test_every_kind_has_a_check_of_its_example() -> None:
    missing = sorted(set(REGISTRY) - set(CHECKS))
    assert not missing, f"kinds without an example check in {__name__}: {missing}"


def test_every_kind_example_is_accepted_and_reconciles(
    api: RunningServer, op: Operator, fleet: SimRunning, rack2: SimRunning, examples: Path
) -> None:
    """Applied after the fleet (the power action resets one of its DPUs), as examples/README.md does."""
    assert upload(op.http, PAYLOAD.read_bytes()).status_code in (200, 201)
    docs = apply(api, examples)
    assert {m.doc["kind"] for m in docs} == set(REGISTRY)
    for manifest in docs:
        CHECKS[manifest.doc["kind"]](op, manifest.doc, rack2)
