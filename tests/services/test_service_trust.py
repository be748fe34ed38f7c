"""Signed service artifacts: what the control plane refuses before placing, and what a DPU refuses again.

The project's rules (allowed publisher classes, requireSignedServices, privilegedServiceClasses) are
applied by the scheduler's visit; a refused service is never placed, and a refused upgrade leaves
the instances on the revision they run. The DPU's runtime checks the signature under its own trust
store and the digest before it fetches anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dpufleet.agent.services import ServiceRuntime, ServicesConfig, load_trust
from dpufleet.api.agent_services import DesiredInstance
from dpufleet.api.kinds import DPUServiceSpec
from dpufleet.crypto.signing import Component, Manifest, Publisher, PublisherClass, sign_manifest
from dpufleet.services.controller import schedule_service
from dpufleet.services.desired import desired_instance
from dpufleet.store.store import Store
from services.test_scheduler_store import store_fleet

P = "default"
SHA = "b" * 64
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
VENDOR_KEY = ed25519.Ed25519PrivateKey.generate()
THIRD_KEY = ed25519.Ed25519PrivateKey.generate()


def pem(key: ed25519.Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def signed(sha: str = SHA, key: ed25519.Ed25519PrivateKey = VENDOR_KEY, publisher: str = "nvidia",
           klass: PublisherClass = PublisherClass.VENDOR, size: int = 1000) -> dict[str, Any]:  # fmt: skip
    manifest = Manifest.model_validate(
        {
            "name": "dns",
            "version": "1.2.0",
            "sequence": 3,
            "components": [Component(name="artifact", sha256=sha, size=size)],
            "publisher": Publisher(name=publisher, **{"class": klass}),
            "issued": NOW - dt.timedelta(days=1),
            "expires": NOW + dt.timedelta(days=30),
        }
    )
    doc: dict[str, Any] = json.loads(sign_manifest(manifest, key).to_json())
    return doc


def artifact(sha: str = SHA, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    art: dict[str, Any] = {"ociArchive": {"url": "http://127.0.0.1:9/dns.tar", "sha256": sha}}
    if manifest is not None:
        art["signedManifest"] = manifest
    return art


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Store]:
    with store_fleet(tmp_path, 2) as store:
        for name, key, klass in (("nvidia", VENDOR_KEY, "vendor"), ("acme", THIRD_KEY, "third-party")):
            store.create({"kind": "Publisher", "metadata": {"name": name},
                          "spec": {"publisherClass": klass, "publicKey": pem(key)}})  # fmt: skip
        yield store


def project(store: Store, **spec: Any) -> None:
    store.create({"kind": "Project", "metadata": {"name": P, "project": P}, "spec": spec})


def apply(store: Store, name: str, art: dict[str, Any], **spec: Any) -> dict[str, Any]:
    doc = {"kind": "DPUService", "metadata": {"name": name},
           "spec": {"artifact": art, "placement": {"mode": "EveryDPU"}, **spec}}  # fmt: skip
    try:
        current = store.get("DPUService", name, P)
    except Exception:
        store.create(doc)
    else:
        doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        store.update(doc)
    schedule_service(store, P, name)
    status: dict[str, Any] = store.get("DPUService", name, P)["status"]
    return status


def trusted(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Trusted")


def test_a_vendor_signed_artifact_is_placed_and_says_who_signed_it(fleet: Store) -> None:
    status = apply(fleet, "dns", artifact(manifest=signed()))
    assert status["scheduled"] == 2
    condition = trusted(status)
    assert condition["status"] == "True" and condition["reason"] == "Signed"
    assert "signed by nvidia (vendor)" in condition["message"]


@pytest.mark.parametrize(
    ("art", "reason", "words"),
    [
        (artifact(manifest=signed(sha="c" * 64)), "DigestMismatch", "its signed manifest says cccccccc"),
        (artifact(manifest=signed(key=THIRD_KEY)), "PublisherMismatch", "claims publisher nvidia"),
        (artifact(manifest=signed(key=ed25519.Ed25519PrivateKey.generate())), "UnknownKey", "untrusted keys"),
        (
            artifact(manifest=signed(key=THIRD_KEY, publisher="acme", klass=PublisherClass.THIRD_PARTY)),
            "ClassNotAllowed",
            "may deploy official, vendor, not third-party",
        ),
    ],
)
def test_a_refused_artifact_is_never_placed(fleet: Store, art: dict[str, Any], reason: str, words: str) -> None:
    status = apply(fleet, "dns", art)
    assert status["scheduled"] == 0 and status["phase"] == "Pending"
    condition = trusted(status)
    assert condition["status"] == "False" and condition["reason"] == reason and words in condition["message"]
    assert reason in (status.get("pendingReason") or "")
    events = [e for e in fleet.list("Event", P).items if e.get("reason") == "ArtifactRefused"]
    assert events and events[0]["type"] == "Warning"


def test_a_tampered_manifest_is_refused(fleet: Store) -> None:
    manifest = signed()
    manifest["manifest"]["version"] = "6.6.6"  # changed after signing
    status = apply(fleet, "dns", artifact(manifest=manifest))
    assert trusted(status)["reason"] == "BadSignature" and status["scheduled"] == 0


def test_the_project_decides_unsigned_and_privileged(fleet: Store) -> None:
    project(fleet, requireSignedServices=True)
    assert trusted(apply(fleet, "plain", artifact()))["reason"] == "Unsigned"
    fleet.delete("Project", P, P)
    project(fleet, allowedPublisherClasses=["vendor", "third-party"])
    status = apply(fleet, "plain", artifact())
    assert trusted(status)["reason"] == "Unsigned" and trusted(status)["status"] == "True"  # accepted unsigned
    status = apply(fleet, "root", artifact(), privileged=True)
    assert (
        trusted(status)["status"] == "False"
        and "must be signed by a publisher of class vendor" in trusted(status)["message"]
    )
    third = signed(key=THIRD_KEY, publisher="acme", klass=PublisherClass.THIRD_PARTY)
    status = apply(fleet, "root", artifact(manifest=third), privileged=True)
    assert (
        trusted(status)["reason"] == "ClassNotAllowed" and "lets only vendor publishers" in trusted(status)["message"]
    )
    status = apply(fleet, "root", artifact(manifest=signed()), privileged=True)
    assert trusted(status)["status"] == "True" and status["scheduled"] == 2


def test_a_refused_upgrade_leaves_the_instances_on_what_they_run(fleet: Store) -> None:
    before = apply(fleet, "dns", artifact(manifest=signed()))
    current = before["upgrade"]["currentRevision"]
    status = apply(fleet, "dns", artifact(sha="d" * 64, manifest=signed()))  # the old signature, a new artifact
    assert trusted(status)["reason"] == "DigestMismatch" and status["scheduled"] == 2
    assert status["upgrade"]["phase"] == "Complete" and status["upgrade"]["currentRevision"] == current
    from dpufleet.services.desired import desired_services

    (instance,) = desired_services(fleet, P, "dpu-0").instances
    assert instance.artifact.sha256() == SHA  # the DPU is still told to run the accepted artifact


def test_the_project_sandboxes_a_publisher_class_and_a_change_restarts_without_a_new_revision(fleet: Store) -> None:
    from dpufleet.services.desired import desired_services

    project(fleet, allowedPublisherClasses=["vendor", "third-party"], serviceSandboxes={"third-party": "restricted",
            "unsigned": "restricted"})  # fmt: skip
    third = signed(key=THIRD_KEY, publisher="acme", klass=PublisherClass.THIRD_PARTY)
    assert apply(fleet, "acme-dns", artifact(manifest=third))["scheduled"] == 2
    assert apply(fleet, "nv-dns", artifact(manifest=signed()))["scheduled"] == 2
    assert apply(fleet, "plain", artifact())["scheduled"] == 2
    runs = {i.service: i for i in desired_services(fleet, P, "dpu-0").instances}
    assert {s: i.sandbox for s, i in runs.items()} == {"acme-dns": "restricted", "nv-dns": "standard",
                                                       "plain": "restricted"}  # fmt: skip

    # the policy relaxed: the same revision, but what the DPU compares a running container with changes
    project_doc = fleet.get("Project", P, P)
    project_doc["spec"]["serviceSandboxes"] = {}
    fleet.update(project_doc)
    after = {i.service: i for i in desired_services(fleet, P, "dpu-0").instances}
    assert after["acme-dns"].sandbox == "standard" and after["acme-dns"].revision == runs["acme-dns"].revision
    assert after["acme-dns"].runs != runs["acme-dns"].runs and after["nv-dns"].runs == runs["nv-dns"].runs

    # a privileged service of a class the project restricts is refused, naming the rule
    project_doc = fleet.get("Project", P, P)
    project_doc["spec"].update(serviceSandboxes={"vendor": "restricted"})
    fleet.update(project_doc)
    status = apply(fleet, "root", artifact(manifest=signed()), privileged=True)
    assert trusted(status)["reason"] == "ClassNotAllowed" and status["scheduled"] == 0
    assert "runs vendor services restricted (serviceSandboxes)" in trusted(status)["message"]
    module = {
        "kernelModule": {"url": "http://127.0.0.1:9/m.ko", "sha256": SHA, "name": "m"},
        "signedManifest": signed(),
    }
    status = apply(fleet, "km", module)
    assert "is a kernel module, but project default runs vendor services restricted" in trusted(status)["message"]


def test_a_sandbox_policy_naming_no_class_is_refused_naming_the_key(fleet: Store) -> None:
    from dpufleet.api.errors import Invalid

    with pytest.raises(Invalid, match=r"serviceSandboxes.*'thirdparty' is not a publisher class"):
        project(fleet, serviceSandboxes={"thirdparty": "restricted"})
    with pytest.raises(Invalid, match=r"serviceSandboxes.third-party"):
        project(fleet, serviceSandboxes={"third-party": "locked-down"})


def test_re_signing_an_artifact_is_not_a_new_revision() -> None:
    spec = {"artifact": artifact(manifest=signed()), "placement": {"mode": "EveryDPU"}}
    again = {**spec, "artifact": artifact(manifest=signed(size=1000))}
    one = desired_instance("dns", "dns/x", DPUServiceSpec.model_validate(spec))
    two = desired_instance("dns", "dns/x", DPUServiceSpec.model_validate(again))
    assert one.revision == two.revision


# --- the DPU's own check -------------------------------------------------------------------------------------


def runtime(tmp_path: Path, *, require_signed: bool = False) -> ServiceRuntime:
    trust = tmp_path / "trusted-publishers.json"
    trust.write_text(json.dumps([{"name": "nvidia", "class": "vendor", "publicKey": pem(VENDOR_KEY)}]))
    config = ServicesConfig(tmp_path / "services", trusted_publishers=trust, require_signed=require_signed)
    return ServiceRuntime(config, "https://127.0.0.1:9", lambda: None)  # type: ignore[arg-type,return-value]


def desired(art: dict[str, Any]) -> DesiredInstance:
    return desired_instance("dns", "dns/dpu-0", DPUServiceSpec.model_validate(
        {"artifact": art, "placement": {"mode": "EveryDPU"}}))  # fmt: skip


def test_the_dpu_refuses_what_its_own_trust_store_does_not_verify(tmp_path: Path) -> None:
    dpu = runtime(tmp_path)
    assert dpu.verify(desired(artifact(manifest=signed()))) is not None
    third = signed(key=THIRD_KEY, publisher="acme", klass=PublisherClass.THIRD_PARTY)
    for art, words in (
        (artifact(manifest=third), "UnknownKey"),  # the control plane may trust acme; this DPU does not
        (artifact(sha="e" * 64, manifest=signed()), "DigestMismatch"),
    ):
        with pytest.raises(ValueError, match=words):
            dpu.verify(desired(art))
    assert dpu.verify(desired(artifact())) is None  # unsigned: the control plane's rule
    with pytest.raises(ValueError, match="runs only signed artifacts"):
        runtime(tmp_path, require_signed=True).verify(desired(artifact()))


def test_a_refused_artifact_is_never_fetched(tmp_path: Path) -> None:
    dpu = runtime(tmp_path)
    with pytest.raises(ValueError, match="artifact refused: DigestMismatch"):
        asyncio.run(dpu.pull(desired(artifact(sha="e" * 64, manifest=signed()))))
    assert not (tmp_path / "services" / "artifacts").exists()


def test_a_bad_trust_store_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps([{"name": "x", "class": "nobody", "publicKey": pem(VENDOR_KEY)}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_trust(path)


def test_the_emulators_trust_store_flags_are_checked_before_anything_starts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dpufleet.main import app

    result = CliRunner().invoke(app, ["sim", "up", "--trusted-publishers", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "go with --services" in result.output
    result = CliRunner().invoke(app, ["agent", "--trusted-publishers", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "go with --services" in result.output
