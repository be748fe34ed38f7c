"""The examples a user starts from are valid documents of every kind the server serves, and the demo
applies the same flavor as examples/fleet/. (tests/examples/test_examples_e2e.py applies them all to a
running server and an emulated fleet; these checks need neither and fail first.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dpufleet import demo
from dpufleet.api.errors import APIError
from dpufleet.api.kinds import REGISTRY
from dpufleet.api.validation import validate_document

from .manifests import (
    EXAMPLES,
    FLEET,
    PASSWORD_PLACEHOLDER,
    PAYLOAD,
    Site,
    by_kind,
    every_manifest,
    manifests,
    site_copy,
)

ALL = every_manifest()


@pytest.mark.parametrize("manifest", ALL, ids=lambda m: m.label)
def test_every_example_is_a_valid_document_of_its_kind(manifest: object) -> None:
    label, doc = manifest.label, manifest.doc  # type: ignore[attr-defined]
    try:
        validate_document(doc)
    except APIError as exc:
        pytest.fail(f"{label}: {exc}")


def test_every_kind_of_the_registry_has_its_own_example_file() -> None:
    """One file per kind at the top of examples/, NN-<kind>.yaml (NN: the order apply reads them in, what
    an object refers to first): a new kind without one fails here."""
    files = {path.name.split("-", 1)[1]: path for path in EXAMPLES.glob("[0-9][0-9]-*.yaml")}
    for kind in REGISTRY:
        path = files.get(f"{kind.lower()}.yaml")
        assert path is not None, f"kind {kind} has no example: write examples/NN-{kind.lower()}.yaml"
        kinds = {m.doc.get("kind") for m in manifests(EXAMPLES) if Path(m.source).name == path.name}
        assert kinds == {kind}, f"{path.name} should hold {kind} documents, holds {sorted(map(str, kinds))}"
    assert sorted(files) == sorted(f"{kind.lower()}.yaml" for kind in REGISTRY), "a file per kind, no more"


def test_the_fleet_holds_what_a_site_starts_with() -> None:
    kinds = by_kind(manifests(FLEET))
    for kind in ("Credential", "Host", "Discovery", "Image", "DPUFlavor", "DPUSet", "RemediationPolicy"):
        assert kind in kinds, f"examples/fleet/ has no {kind}"


def test_images_name_the_payload_the_readme_uploads() -> None:
    data = PAYLOAD.read_bytes()
    images = by_kind(ALL)["Image"]
    assert len(images) >= 2, "examples/image.yaml and examples/fleet/31-image.yaml"
    for image in images:
        for component in image["spec"]["components"]:
            assert component["sha256"] == hashlib.sha256(data).hexdigest(), image["metadata"]["name"]
            assert component["size"] == len(data), image["metadata"]["name"]


def test_the_site_values_a_user_changes_are_all_replaced(tmp_path: Path) -> None:
    """What examples/README.md says to change is everything that names the README's fleets."""
    copy = site_copy(Site(20001, "fleet-secret", 20010, "rack2-secret"), tmp_path)
    docs = json.dumps([m.doc for m in manifests(copy) + manifests(copy / "fleet")])
    for old in (PASSWORD_PLACEHOLDER, "8443", "8450", "8451"):
        assert old not in docs
    fleet, rack2 = by_kind(manifests(copy / "fleet")), by_kind(manifests(copy))
    assert fleet["Credential"][0]["spec"]["password"] == "fleet-secret"
    assert all(url.startswith("http://127.0.0.1:20001/bmc/") for url in fleet["Discovery"][0]["spec"]["endpoints"])
    assert rack2["Credential"][0]["spec"]["password"] == "rack2-secret"
    assert rack2["Discovery"][0]["spec"]["ports"] == [20010]
    assert rack2["BMC"][0]["spec"]["address"] == "http://127.0.0.1:20011"


def test_the_demo_applies_the_fleet_flavor() -> None:
    """The demo's "Applying an example flavor" is examples/fleet/30-dpuflavor.yaml, in a checkout or not."""
    (flavor,) = by_kind(manifests(FLEET))["DPUFlavor"]
    assert demo.example_objects() == [flavor]
    assert [flavor] == demo.BUILTIN_EXAMPLE_OBJECTS, "the demo's copy for installs without examples/ has drifted"
