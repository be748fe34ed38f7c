"""Signed images end to end, on the emulated fleet through the real server and its provisioner.

Given publisher keys made with `dpufleet image keygen` and trusted with `dpufleet publisher trust`,
and images whose manifests were signed with `dpufleet image sign --embed`, when a DPU's spec names
an image, then a signed image from a trusted vendor installs (and its manifest sequence is recorded);
a tampered manifest, an unsigned image where the project requires signatures, an unknown key, an
expired manifest, a publisher class the project does not allow, a manifest whose digests differ from
the Image's, a manifest for another model, and an older sequence than the installed one are each
refused at staging, the DPU waiting in StagingImageFailed with the reason, and nothing is flashed.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from dpufleet.main import app
from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator, condition, image_doc, sha, upload
from provisioning.conftest import api as api
from provisioning.conftest import fleet as fleet
from provisioning.conftest import http as http
from provisioning.conftest import site as site
from support.server import RunningServer

pytestmark = pytest.mark.timeout(120)

VENDOR = "nvidia"
THIRD_PARTY = "acme-tools"


def run_cli(api: RunningServer | None, *args: str) -> str:
    prefix = ["--server", api.url, "--token", api.token] if api is not None else []
    result = CliRunner().invoke(app, [*prefix, *args])
    assert result.exit_code == 0, result.output
    return result.output


def dpus(fleet: SimRunning) -> list[tuple[str, SimBMC]]:
    return sorted((f"dpu-{b.dpu.serial.lower()}", b) for b in fleet.fleet.bmcs.values())


def set_spec(op: Operator, name: str, **spec: Any) -> None:
    resp = op.http.patch(
        op.path("dpus", name), json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text


def phase_is(*phases: str, image: str | None = None) -> Any:
    def done(dpu: dict[str, Any]) -> bool:
        status = dpu.get("status") or {}
        on = image is None or (status.get("provisioning") or {}).get("image") == image
        return on and status.get("phase") in phases

    return done


@pytest.fixture(scope="module")
def keys(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trusted vendor key, a trusted third-party key, and a key nobody trusts."""
    directory = tmp_path_factory.mktemp("keys")
    made = {}
    for who in ("vendor", "third", "rogue"):
        path = directory / f"{who}.key"
        out = run_cli(None, "image", "keygen", "--out", str(path))
        assert "key id:" in out
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        made[who] = path
    run_cli(api, "publisher", "trust", VENDOR, "--class", "vendor", "--public-key", f"{made['vendor']}.pub")
    run_cli(api, "publisher", "trust", THIRD_PARTY, "--class", "third-party", "--public-key", f"{made['third']}.pub")
    return made


@pytest.fixture(scope="module")
def inventory(site: Operator, fleet: SimRunning) -> dict[str, str]:
    """Vendor, model and part number of the fleet's DPUs (all one profile), as inventoried."""
    status = site.get("dpus", dpus(fleet)[0][0])
    assert status is not None
    return {k: status["status"][k] for k in ("vendor", "model", "partNumber")}


def signed_image(
    op: Operator,
    tmp: Path,
    name: str,
    data: bytes,
    key: Path,
    *,
    sequence: int = 5,
    publisher: tuple[str, str] = (VENDOR, "vendor"),
    signed_data: bytes | None = None,
    compatibility: dict[str, list[str]] | None = None,
    expires: dt.datetime | None = None,
    issued: dt.datetime | None = None,
    tamper: bool = False,
) -> str:
    """Upload `data`, sign a manifest for it (or for `signed_data`) with the CLI, create the Image."""
    assert upload(op.http, data).status_code == 201
    version = f"{name}-v{sequence}"
    body = signed_data if signed_data is not None else data
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "sequence": sequence,
        "components": [{"name": "os", "sha256": sha(body), "size": len(body)}],
        "compatibility": compatibility or {},
        "publisher": {"name": publisher[0], "class": publisher[1]},
    }
    if expires is not None:
        manifest["expires"] = expires.isoformat()
    if issued is not None:
        manifest["issued"] = issued.isoformat()
    (tmp / f"{name}.manifest.yaml").write_text(yaml.safe_dump(manifest))
    (tmp / f"{name}.image.yaml").write_text(yaml.safe_dump(image_doc(name, version, data)))
    out = run_cli(
        None,
        "image",
        "sign",
        str(tmp / f"{name}.manifest.yaml"),
        "--key",
        str(key),
        "--embed",
        str(tmp / f"{name}.image.yaml"),
    )
    doc = json.loads(out)
    if tamper:
        doc["spec"]["signedManifest"]["manifest"]["sequence"] += 1000
    op.create("images", doc)
    return name


def refused(op: Operator, bmc: SimBMC, dpu: str, reason: str) -> dict[str, Any]:
    found = op.wait_object("dpus", dpu, phase_is("StagingImageFailed", "Ready"), timeout=30)
    status = found["status"]
    assert status["phase"] == "StagingImageFailed", json.dumps(status.get("provisioning"), indent=1)
    staged = condition(found, "ImageStaged")
    assert staged is not None and staged["status"] == "False" and staged["reason"] == reason, staged
    assert status["provisioning"]["reason"] == reason
    assert not bmc.tasks, "nothing may be flashed"
    return found


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def test_signed_image_from_trusted_vendor_installs_then_rollback_is_refused_unless_allowed(
    site: Operator, fleet: SimRunning, keys: dict[str, Path], inventory: dict[str, str], tmp: Path, api: RunningServer
) -> None:
    name, bmc = dpus(fleet)[0]
    compat = {"vendors": [inventory["vendor"]], "models": [inventory["model"]]}
    good = signed_image(
        site, tmp, "signed-v5", b"signed os v5\n" * 500, keys["vendor"], sequence=5, compatibility=compat
    )
    set_spec(site, name, image=good)
    dpu = site.wait_object("dpus", name, phase_is("Ready", "StagingImageFailed"), timeout=30)
    assert dpu["status"]["phase"] == "Ready", dpu["status"].get("provisioning")
    assert dpu["status"]["installedSequence"] == 5
    assert len(bmc.tasks) == 1

    old = signed_image(site, tmp, "signed-v3", b"signed os v3\n" * 500, keys["vendor"], sequence=3)
    set_spec(site, name, image=old)
    found = site.wait_object("dpus", name, phase_is("StagingImageFailed", "Ready", image=old), timeout=30)
    assert found["status"]["phase"] == "StagingImageFailed"
    assert found["status"]["provisioning"]["reason"] == "Rollback"
    assert "older than the installed 5" in found["status"]["provisioning"]["message"]
    assert len(bmc.tasks) == 1, "the rollback was flashed"

    resp = site.http.patch(
        site.path("dpus", name),
        json={"metadata": {"annotations": {"dpufleet.io/allow-downgrade": "true"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    run_cli(api, "dpu", "retry", name)
    dpu = site.wait_object("dpus", name, lambda d: d["status"].get("installedSequence") == 3, timeout=30)
    assert dpu["status"]["phase"] == "Ready"
    assert len(bmc.tasks) == 2


REFUSALS = ["tampered", "unknown-key", "expired", "class", "digest", "model", "unsigned"]


@pytest.fixture(scope="module")
def requested(
    site: Operator,
    fleet: SimRunning,
    keys: dict[str, Path],
    inventory: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[str, SimBMC]]]:
    """Every refusal case set in motion at once, each on its own DPU (1-7)."""
    tmp = tmp_path_factory.mktemp("refused")
    vendor = keys["vendor"]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    data = {case: f"{case} os image\n".encode() * 300 for case in REFUSALS}
    images = {
        "tampered": signed_image(site, tmp, "tampered", data["tampered"], vendor, tamper=True),
        "unknown-key": signed_image(site, tmp, "unknown-key", data["unknown-key"], keys["rogue"]),
        "expired": signed_image(
            site, tmp, "expired", data["expired"], vendor, issued=past, expires=past + dt.timedelta(days=1)
        ),
        "class": signed_image(site, tmp, "third", data["class"], keys["third"], publisher=(THIRD_PARTY, "third-party")),
        "digest": signed_image(site, tmp, "digest", data["digest"], vendor, signed_data=b"other bytes\n" * 300),
        "model": signed_image(
            site, tmp, "other-model", data["model"], vendor, compatibility={"models": ["Not-" + inventory["model"]]}
        ),
    }
    assert upload(site.http, data["unsigned"]).status_code == 201
    site.create("images", image_doc("unsigned", "u1", data["unsigned"]))
    images["unsigned"] = "unsigned"
    project = {"spec": {"requireSignedImages": True}}
    if site.get("projects", "default") is None:
        site.create("projects", {"kind": "Project", "metadata": {"name": "default"}, **project})
    else:
        resp = site.http.patch(
            site.path("projects", "default"), json=project, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert resp.status_code == 200, resp.text
    by_case = {}
    for case, (dpu, bmc) in zip(REFUSALS, dpus(fleet)[1:], strict=True):
        set_spec(site, dpu, image=images[case])
        by_case[case] = (dpu, bmc)
    yield by_case
    site.http.patch(
        site.path("projects", "default"),
        json={"spec": {"requireSignedImages": False}},
        headers={"Content-Type": "application/merge-patch+json"},
    )


@pytest.mark.parametrize(
    ("case", "reason", "says"),
    [
        ("tampered", "BadSignature", "altered after signing"),
        ("unknown-key", "UnknownKey", "untrusted keys"),
        ("expired", "Expired", "expired at"),
        ("class", "ClassNotAllowed", "may deploy official, vendor, not third-party"),
        ("digest", "DigestMismatch", "the signed manifest says"),
        ("model", "Incompatible", "is signed for model"),
        ("unsigned", "Unsigned", "requires one"),
    ],
)
def test_each_bad_image_is_refused_at_staging_with_its_reason_and_nothing_is_flashed(
    site: Operator, requested: dict[str, tuple[str, SimBMC]], case: str, reason: str, says: str
) -> None:
    dpu, bmc = requested[case]
    found = refused(site, bmc, dpu, reason)
    assert says in found["status"]["provisioning"]["message"]


def test_only_admins_write_publishers(api: RunningServer, site: Operator, keys: dict[str, Path]) -> None:
    resp = site.http.post("/auth/v1/tokens", json={"name": "signing-operator", "grants": ["operator"]})
    assert resp.status_code == 201, resp.text
    token = resp.json()["token"]
    doc = {
        "kind": "Publisher",
        "metadata": {"name": "sneaky"},
        "spec": {"publisherClass": "vendor", "publicKey": Path(f"{keys['rogue']}.pub").read_text()},
    }
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as operator:
        denied = operator.post(site.path("publishers"), json=doc)
        assert denied.status_code == 403, denied.text
        assert operator.get(site.path("publishers", VENDOR)).status_code == 200
    bad = site.http.post(site.path("publishers"), json={**doc, "spec": {**doc["spec"], "publicKey": "bm90IGEga2V5"}})
    assert bad.status_code == 422 and "publicKey" in bad.text, bad.text
