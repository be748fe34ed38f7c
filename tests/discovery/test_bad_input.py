"""Given a network with things that are not good BMCs, discovery says what each one is and carries on.

Every bad endpoint becomes a count, an error line, a condition or an event; none crashes the scan,
none holds up the good BMCs beside it. Each scenario runs in its own project of one API server, and
releases the hardware when it ends: serials are fleet-unique, so the next project may adopt it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.api.naming import bmc_name
from dpufleet.crypto.secrets import SecretBox
from dpufleet.inventory.bmc import BMCReconciler
from dpufleet.runtime.controller import Key
from dpufleet.sim.bmc import BmcLimits, new_bmc
from dpufleet.sim.devices import SimDPU
from dpufleet.sim.fleet import Fleet, build_fleet, fleet_in_thread
from dpufleet.store.store import Store

from .conftest import Operator, TinyService, as_json, closed_port, condition, is_true, serve_routes

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "fleetadmin", "Bad-Input-Site-Pw1"
SLOW_LATENCY = 30.0  # far beyond any probe timeout below: a probe that waited for it would show


@dataclass
class Site:
    fleet: Fleet
    endpoints: dict[str, str]  # BMC id -> base URL
    twin_url: str  # a second BMC reporting the serial of good[0]

    def good(self, index: int) -> tuple[str, SimDPU]:
        bmc = list(self.fleet.bmcs.values())[index]
        return self.endpoints[bmc.id], bmc.dpu


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Four emulated BMCs (the last one very slow), each on its own port, and a twin of the first."""
    fleet = build_fleet(
        4,
        1,
        ["nvidia-bluefield-3", "amd-pensando-dsc"],
        seed=77,
        directory=tmp_path_factory.mktemp("fleet"),
        username=USER,
        password_for=lambda _bmc: PASSWORD,
        time_scale=0.01,
    )
    slow = list(fleet.bmcs.values())[3]
    slow.set_limits(BmcLimits(latency_seconds=SLOW_LATENCY))
    first = next(iter(fleet.bmcs.values()))
    twin = Fleet(seed=0, hosts=[], bmcs={"twin": new_bmc("twin", first.dpu, {USER: PASSWORD})})
    with fleet_in_thread(fleet, per_bmc_ports=True) as served, fleet_in_thread(twin, per_bmc_ports=True) as twins:
        yield Site(fleet, served.endpoints, twins.endpoints["twin"])


BASE = "/apis/dpufleet.io/v1alpha1"


@pytest.fixture(autouse=True)
def release_hardware(http: httpx.Client) -> Iterator[None]:
    """After each scenario: its Discoveries and BMCs go (no more crawls), then its DPUs."""
    yield
    for plural in ("discoveries", "bmcs"):
        for obj in http.get(f"{BASE}/{plural}").json()["items"]:
            meta = obj["metadata"]
            http.delete(f"{BASE}/projects/{meta['project']}/{plural}/{meta['name']}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a crawl in flight when its BMC went may still write a DPU
        dpus = http.get(f"{BASE}/dpus").json()["items"]
        for obj in dpus:
            http.delete(f"{BASE}/projects/{obj['metadata']['project']}/dpus/{obj['metadata']['name']}")
        if not dpus:
            time.sleep(0.3)
            if not http.get(f"{BASE}/dpus").json()["items"]:
                return
    raise AssertionError("the scenario's DPUs kept coming back after its BMCs were deleted")


def operator(http: httpx.Client, project: str, with_credential: bool = True) -> Operator:
    op = Operator(http, project)
    if with_credential:
        op.credential("site", USER, PASSWORD)
    return op


def scan_seconds(disc: dict[str, Any]) -> float:
    started, finished = (
        datetime.fromisoformat(disc["status"][k].replace("Z", "+00:00"))
        for k in ("lastScanStarted", "lastScanFinished")
    )
    return (finished - started).total_seconds()


def test_an_unreachable_endpoint_is_counted_and_named_while_the_others_are_managed(
    http: httpx.Client, site: Site
) -> None:
    op = operator(http, "unreachable")
    (good_a, _), (good_b, _) = site.good(0), site.good(1)
    down = f"http://127.0.0.1:{closed_port()}"
    op.discovery("mixed", endpoints=[good_a, down, good_b], credentialsRef="site")
    disc = op.wait_scanned("mixed")
    status = disc["status"]
    assert (status["probed"], status["redfishFound"], status["unreachable"]) == (3, 2, 1)
    assert len(status["errors"]) == 1 and status["errors"][0].startswith(down)
    assert is_true(disc, "Scanned")
    for url in (good_a, good_b):
        assert is_true(op.wait_bmc_settled(bmc_name(url)), "Ready")
    assert op.get("bmcs", bmc_name(down)) is None


def test_a_slow_bmc_times_out_without_holding_up_the_others(http: httpx.Client, site: Site) -> None:
    op = operator(http, "slow")
    slow = site.endpoints[list(site.fleet.bmcs)[3]]
    (good_a, _), (good_b, _) = site.good(0), site.good(1)
    began = time.monotonic()
    op.discovery("slow", endpoints=[slow, good_a, good_b], credentialsRef="site", probeTimeoutSeconds=0.5)
    disc = op.wait_scanned("slow", timeout=SLOW_LATENCY / 2)
    for url in (good_a, good_b):
        assert is_true(op.wait_bmc_settled(bmc_name(url), timeout=SLOW_LATENCY / 2), "Ready")
    # Bounded by the probe timeout, not by the slow BMC's 30 s.
    assert time.monotonic() - began < SLOW_LATENCY / 2
    assert scan_seconds(disc) < SLOW_LATENCY / 4
    status = disc["status"]
    assert (status["redfishFound"], status["unreachable"]) == (2, 1)
    assert any(e.startswith(slow) and "timed out after 0.5s" in e for e in status["errors"]), status["errors"]


def test_wrong_credentials_fail_authentication_and_create_no_dpu(http: httpx.Client, site: Site) -> None:
    op = operator(http, "wrong-password", with_credential=False)
    op.credential("site", USER, "not-the-password")
    url, dpu = site.good(0)
    op.discovery("lab", endpoints=[url], credentialsRef="site")
    bmc = op.wait_bmc_settled(bmc_name(url))
    auth, ready = condition(bmc, "Authenticated"), condition(bmc, "Ready")
    assert auth is not None and (auth["status"], auth["reason"]) == ("False", "AuthenticationFailed")
    assert "refused the credentials" in auth["message"]
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "AuthenticationFailed")
    assert is_true(bmc, "Reachable") and bmc["status"]["reachable"] is True
    assert bmc["status"]["phase"] == "Error"
    assert op.objects("dpus") == []
    warning = op.wait_for(
        "an AuthenticationFailed event",
        lambda: [e for e in op.events("BMC", bmc["metadata"]["name"]) if e["reason"] == "AuthenticationFailed"],
        bool,
    )
    assert warning[0]["type"] == "Warning"
    assert dpu.serial not in str(bmc["status"])  # nothing was read behind the refused login


def test_a_missing_credential_is_named(http: httpx.Client, site: Site) -> None:
    op = operator(http, "no-credential", with_credential=False)
    url, _ = site.good(1)
    op.discovery("lab", endpoints=[url], credentialsRef="never-created")
    bmc = op.wait_bmc_settled(bmc_name(url))
    ready = condition(bmc, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "CredentialsMissing")
    assert "'never-created'" in ready["message"]
    assert op.objects("dpus") == []


@pytest.fixture(scope="module")
def not_redfish() -> Iterator[dict[str, TinyService]]:
    """Web services a scan meets on BMC ports: a login page, a JSON API, a server that knows no /redfish."""
    html = b"<!doctype html><html><body><form>Login</form></body></html>"
    services = {
        "html": serve_routes({}, fallback=(200, "text/html", html)),
        "json": serve_routes({}, fallback=as_json({"status": "ok", "service": "inventory-db", "version": 3})),
        "404": serve_routes({}),
    }
    try:
        yield services
    finally:
        for service in services.values():
            service.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_services_that_are_not_redfish_are_counted_and_named(
    http: httpx.Client, not_redfish: dict[str, TinyService]
) -> None:
    op = operator(http, "not-redfish")
    ports = [port_of(s.url) for s in not_redfish.values()] + [closed_port()]
    op.discovery("scan", cidrs=["127.0.0.1/32"], ports=ports, credentialsRef="site")
    disc = op.wait_scanned("scan")
    status = disc["status"]
    assert (status["probed"], status["redfishFound"], status["notRedfish"], status["unreachable"]) == (4, 0, 3, 1)
    errors = {e.partition(": ")[0]: e for e in status["errors"]}  # "<url>: <what it answered>"
    assert "not JSON" in errors[not_redfish["html"].url]
    assert "not a Redfish service root" in errors[not_redfish["json"].url]
    assert "HTTP 404" in errors[not_redfish["404"].url]
    scanned = condition(disc, "Scanned")
    assert scanned is not None and (scanned["status"], scanned["reason"]) == ("False", "NothingFound")
    assert condition(disc, "Ready")["reason"] == "NothingFound"  # type: ignore[index]
    assert op.objects("bmcs") == []


def _root(systems: str = "/redfish/v1/Systems") -> Any:
    return as_json(
        {
            "@odata.id": "/redfish/v1",
            "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
            "Id": "RootService",
            "RedfishVersion": "1.17.0",
            "Vendor": "Broken Inc",
            "Systems": {"@odata.id": systems},
        }
    )


def _collection(*members: Any) -> Any:
    return as_json({"@odata.id": "/redfish/v1/Systems", "Members": list(members), "Members@odata.count": len(members)})


def _dpu_system(**overrides: Any) -> Any:
    body = {
        "@odata.id": "/redfish/v1/Systems/DPU",
        "Id": "DPU",
        "SystemType": "DPU",
        "Manufacturer": "Broken Inc",
        "Model": "Brick",
        "SerialNumber": "BROKEN0001",
        "PowerState": "On",
    }
    body.update(overrides)
    return as_json(body)


MALFORMED: dict[str, dict[str, Any]] = {
    "member-is-html": {
        "/redfish/v1": _root(),
        "/redfish/v1/Systems": _collection({"@odata.id": "/redfish/v1/Systems/DPU"}),
        "/redfish/v1/Systems/DPU": (200, "text/html", b"<html>500 internal</html>"),
    },
    "collection-errors": {
        "/redfish/v1": _root(),
        "/redfish/v1/Systems": as_json({"error": {"message": "backend down"}}, status=500),
    },
    "link-is-a-number": {
        "/redfish/v1": _root(),
        "/redfish/v1/Systems": _collection({"@odata.id": 42}),
    },
    "reset-types-not-a-list": {
        "/redfish/v1": _root(),
        "/redfish/v1/Systems": _collection({"@odata.id": "/redfish/v1/Systems/DPU"}),
        "/redfish/v1/Systems/DPU": _dpu_system(
            SerialNumber="BROKEN0002",
            Actions={"#ComputerSystem.Reset": {"target": "/x", "ResetType@Redfish.AllowableValues": 5}},
        ),
    },
    "summaries-of-the-wrong-type": {
        "/redfish/v1": _root(),
        "/redfish/v1/Systems": _collection({"@odata.id": "/redfish/v1/Systems/DPU"}),
        "/redfish/v1/Systems/DPU": _dpu_system(
            ProcessorSummary="sixteen", MemorySummary=[1, 2], Status="OK", BootProgress=7
        ),
    },
}


@pytest.fixture(scope="module")
def malformed() -> Iterator[dict[str, TinyService]]:
    services = {name: serve_routes(routes) for name, routes in MALFORMED.items()}
    try:
        yield services
    finally:
        for service in services.values():
            service.stop()


def test_malformed_redfish_becomes_a_condition_and_the_good_bmc_is_still_managed(
    http: httpx.Client, site: Site, malformed: dict[str, TinyService]
) -> None:
    op = operator(http, "malformed")
    good, _ = site.good(2)
    op.discovery("lab", endpoints=[good, *(s.url for s in malformed.values())], credentialsRef="site")
    disc = op.wait_scanned("lab")
    assert disc["status"]["redfishFound"] == len(malformed) + 1  # each service root is valid Redfish
    assert is_true(op.wait_bmc_settled(bmc_name(good)), "Ready")
    # Every BMC gets its Inventoried verdict: False with CrawlFailed and the cause, or True.
    settled: dict[str, dict[str, Any] | None] = {}
    deadline = time.monotonic() + 5  # bounded: a BMC whose crawl crashed never settles
    while time.monotonic() < deadline:
        settled = {case: op.get("bmcs", bmc_name(s.url)) for case, s in malformed.items()}
        if all(b is not None and condition(b, "Ready") for b in settled.values()):
            break
        time.sleep(0.05)
    verdicts = {case: condition(b or {}, "Inventoried") for case, b in settled.items()}
    for case, cond in verdicts.items():
        if cond is not None and cond["status"] == "False":
            assert cond["reason"] == "CrawlFailed" and cond["message"], case
    assert verdicts["member-is-html"]["status"] == "False"  # type: ignore[index]
    assert "not JSON" in verdicts["member-is-html"]["message"]  # type: ignore[index]
    assert verdicts["collection-errors"]["status"] == "False"  # type: ignore[index]
    assert "HTTP 500: backend down" in verdicts["collection-errors"]["message"]  # type: ignore[index]
    # Optional summaries of the wrong type are ignored: the DPU is still identified by its serial.
    assert verdicts["summaries-of-the-wrong-type"]["status"] == "True"  # type: ignore[index]
    brick = op.get("dpus", "dpu-broken0001")
    assert brick is not None and (brick["status"]["vendor"], brick["status"]["model"]) == ("Broken Inc", "Brick")
    # Links and action values of the wrong type must not crash the crawl either (they did: see the report).
    silent = [case for case, cond in verdicts.items() if cond is None]
    assert not silent, f"BMCs left without any condition (the crawl raised instead): {silent}"


def test_a_duplicate_serial_stays_with_the_first_bmc_and_the_second_is_flagged(http: httpx.Client, site: Site) -> None:
    op = operator(http, "duplicates")
    first, dpu = site.good(0)
    op.discovery("first", endpoints=[first], credentialsRef="site")
    dpu_name = f"dpu-{dpu.serial.lower()}"
    owned = op.wait_object("dpus", dpu_name, lambda d: d["status"].get("bmc") == bmc_name(first))
    op.discovery("second", endpoints=[site.twin_url], credentialsRef="site")
    twin = op.wait_bmc_settled(bmc_name(site.twin_url))
    inventoried, ready = condition(twin, "Inventoried"), condition(twin, "Ready")
    assert inventoried is not None and (inventoried["status"], inventoried["reason"]) == ("False", "DuplicateSerial")
    assert dpu.serial in inventoried["message"]
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "DuplicateSerial")
    assert twin["status"]["dpus"] == [] and twin["status"]["serialNumbers"] == [dpu.serial]
    events = op.wait_for(
        "a DuplicateSerial event on the second BMC",
        lambda: [e for e in op.events("BMC", twin["metadata"]["name"]) if e["reason"] == "DuplicateSerial"],
        bool,
    )
    assert events[0]["type"] == "Warning" and dpu.serial in events[0]["message"]
    after = op.get("dpus", dpu_name)
    assert after is not None and after["status"]["bmc"] == bmc_name(first)
    assert after["metadata"]["uid"] == owned["metadata"]["uid"]
    assert [d["metadata"]["name"] for d in op.objects("dpus")] == [dpu_name]


def test_only_expected_machines_are_adopted(http: httpx.Client, site: Site) -> None:
    op = operator(http, "expected")
    (known_url, known), (unknown_url, unknown) = site.good(0), site.good(1)
    op.discovery(
        "allow-list",
        endpoints=[known_url, unknown_url],
        credentialsRef="site",
        adoption="Expected",
        expectedSerials=[known.serial],
    )
    adopted = op.wait_bmc_settled(bmc_name(known_url))
    assert adopted["status"]["phase"] == "Managed" and adopted["status"]["adopted"] is True
    assert is_true(adopted, "Adopted")
    stranger = op.wait_bmc_settled(bmc_name(unknown_url))
    assert stranger["status"]["phase"] == "Discovered" and stranger["status"]["adopted"] is False
    adopted_cond = condition(stranger, "Adopted")
    assert adopted_cond is not None and (adopted_cond["status"], adopted_cond["reason"]) == ("False", "NotExpected")
    assert unknown.serial in adopted_cond["message"]
    # The unknown BMC is recorded with what it is, but no DPU is created for it.
    assert stranger["status"]["serialNumbers"] == [unknown.serial] and stranger["status"]["dpus"] == []
    assert [d["metadata"]["name"] for d in op.objects("dpus")] == [f"dpu-{known.serial.lower()}"]
    events = op.wait_for(
        "a NotAdopted event",
        lambda: [e for e in op.events("BMC", stranger["metadata"]["name"]) if e["reason"] == "NotAdopted"],
        bool,
    )
    assert events[0]["type"] == "Warning"


def test_a_changed_adoption_policy_is_applied_to_the_discoverys_bmcs_at_once(http: httpx.Client, site: Site) -> None:
    op = operator(http, "policy-change")
    (url, dpu) = site.good(2)
    op.discovery("allow-list", endpoints=[url], credentialsRef="site", adoption="Expected", expectedSerials=[])
    stranger = op.wait_bmc_settled(bmc_name(url))
    assert stranger["status"]["adopted"] is False
    resp = http.patch(
        op.path("discoveries", "allow-list"),
        json={"spec": {"expectedSerials": [dpu.serial]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    adopted = op.wait_object("bmcs", bmc_name(url), lambda b: b["status"].get("adopted") is True, timeout=15)
    assert adopted["status"]["dpus"] == [f"dpu-{dpu.serial.lower()}"], "adopted without waiting for the next crawl"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("cidrs", ["198.51.100.0/33"], "is not a CIDR range"),
        ("ports", [443, 70000], "port 70000 is out of range"),
        ("endpoints", ["198.51.100.7:443"], "must be an http:// or https:// URL"),
    ],
)
def test_an_invalid_discovery_is_refused_naming_the_field(
    http: httpx.Client, field: str, value: Any, fragment: str
) -> None:
    op = operator(http, f"invalid-{field}", with_credential=False)
    resp = http.post(
        op.path("discoveries"),
        json={"kind": "Discovery", "metadata": {"name": "bad"}, "spec": {field: value}},
    )
    assert resp.status_code == 422, resp.text
    assert field in resp.text and fragment in resp.text
    assert op.get("discoveries", "bad") is None
    assert op.objects("discoveries") == [] and op.objects("bmcs") == []


def test_a_bmc_is_crawled_again_only_when_its_object_changes_or_its_period_is_up(site: Site, tmp_path: Path) -> None:
    """The runtime visits every BMC at each resync; a visit between crawls asks the BMC nothing (at 10,000
    BMCs a crawl per visit was 800 Redfish requests a second), a changed BMC object is crawled at once."""
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", SecretBox.load_or_create(tmp_path))
    store.migrate()
    store.create({"kind": "Credential", "metadata": {"name": "site"}, "spec": {"username": USER, "password": PASSWORD}})
    url, _ = site.good(2)
    store.create({"kind": "BMC", "metadata": {"name": "b"}, "spec": {"address": url, "credentialsRef": "site"}})
    bmc = next(b for b in site.fleet.bmcs.values() if site.endpoints[b.id] == url)
    reconciler, key = BMCReconciler(store), Key("default", "b")

    served = bmc.requests_served
    first = asyncio.run(reconciler.reconcile(key))
    assert bmc.requests_served > served and store.get("BMC", "b")["status"]["dpus"], "the first visit crawls"
    assert first.requeue_after is not None and 240 <= first.requeue_after <= 360, "300 s, varied by up to 20%"

    served = bmc.requests_served
    resync = asyncio.run(reconciler.reconcile(key))
    assert bmc.requests_served == served, "a visit before the period is up asks the BMC nothing"
    assert resync.requeue_after is not None and 0 < resync.requeue_after <= first.requeue_after

    store.patch("BMC", "b", {"metadata": {"annotations": {"dpufleet.io/refresh": "now"}}})
    asyncio.run(reconciler.reconcile(key))
    assert bmc.requests_served > served, "a changed BMC object is crawled at once"

    wrong = {"username": USER, "password": "not-the-password"}
    store.create({"kind": "Credential", "metadata": {"name": "wrong"}, "spec": wrong})
    store.create({"kind": "BMC", "metadata": {"name": "refused"}, "spec": {"address": url, "credentialsRef": "wrong"}})
    failed = asyncio.run(reconciler.reconcile(Key("default", "refused")))
    assert failed.requeue_after == reconciler.retry_seconds
    served = bmc.requests_served
    asyncio.run(reconciler.reconcile(Key("default", "refused")))
    assert bmc.requests_served > served, "a BMC whose crawl failed is tried again at its next visit"
    store.close()


def test_a_dpu_declared_before_its_bmc_is_crawled_gets_the_identity_labels_a_dpuset_selects_by(
    site: Site, tmp_path: Path
) -> None:
    """A DPU first made by a manifest or its host's agent carries no vendor/model labels; the crawl adds
    them (a DPUSet selecting `dpufleet.io/vendor` must see it) and leaves a label the user set alone."""
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", SecretBox.load_or_create(tmp_path))
    store.migrate()
    store.create({"kind": "Credential", "metadata": {"name": "site"}, "spec": {"username": USER, "password": PASSWORD}})
    url, dpu = site.good(2)
    name = f"dpu-{dpu.serial.lower()}"
    store.create(
        {
            "kind": "DPU",
            "metadata": {"name": name, "labels": {"pool": "general", "dpufleet.io/model": "mine"}},
            "spec": {"serialNumber": dpu.serial},
        }
    )
    store.create({"kind": "BMC", "metadata": {"name": "b"}, "spec": {"address": url, "credentialsRef": "site"}})
    asyncio.run(BMCReconciler(store).reconcile(Key("default", "b")))
    labels = store.get("DPU", name)["metadata"]["labels"]
    assert labels["dpufleet.io/vendor"] not in ("", "unknown"), labels
    assert labels["dpufleet.io/model"] == "mine", "a label the user set is not changed"
    assert labels["pool"] == "general"
    store.close()
