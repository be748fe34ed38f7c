"""Tokens (expiry, revocation), project scoping and leases, and the tenant rule, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from dpufleet.server import auth as auth_module
from support.server import BASE, RunningServer

from .conftest import as_token, make_token

MERGE = {"Content-Type": "application/merge-patch+json"}


def dpus(project: str, name: str = "") -> str:
    return f"{BASE}/projects/{project}/dpus" + (f"/{name}" if name else "")


@pytest.fixture(scope="module")
def fleet(admin: httpx.Client) -> None:
    """Given the infra project owns three DPUs, one leased to tenant-a, and tenant-b owns one."""
    for project in ("infra", "tenant-a", "tenant-b"):
        body = {"kind": "Project", "metadata": {"name": project, "project": project}}
        assert admin.post(f"{BASE}/projects/{project}/projects", json=body).status_code == 201
    docs = [
        ("infra", "leased-1", {"serialNumber": "MT1", "lessee": "tenant-a", "image": "os-1"}),
        ("infra", "spare-1", {"serialNumber": "MT2"}),
        ("tenant-b", "b-own-1", {"serialNumber": "MT3"}),
    ]
    for project, name, spec in docs:
        response = admin.post(dpus(project), json={"kind": "DPU", "metadata": {"name": name}, "spec": spec})
        assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def tenant(api: RunningServer, admin: httpx.Client, fleet: None) -> Iterator[httpx.Client]:
    with as_token(api, make_token(admin, "alice", "tenant@tenant-a")) as client:
        yield client


def test_no_token_and_a_wrong_token_are_401(api: RunningServer) -> None:
    for headers in ({}, {"Authorization": "Bearer dpf_not-a-token"}):
        response = httpx.get(api.url + dpus("infra"), headers=headers)
        assert response.status_code == 401
        assert response.json()["reason"] == "Unauthorized"


def test_an_expired_token_is_401(api: RunningServer, admin: httpx.Client) -> None:
    token = make_token(admin, "short-lived", "viewer", expires="1s")
    with as_token(api, token) as client:
        assert client.get(dpus("infra")).status_code == 200
        time.sleep(1.1)
        response = client.get(dpus("infra"))
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


def test_a_revoked_token_is_401_at_once(api: RunningServer, admin: httpx.Client) -> None:
    token = make_token(admin, "to-revoke", "viewer")
    with as_token(api, token) as client:
        assert client.get(dpus("infra")).status_code == 200
        assert admin.delete("/auth/v1/tokens/to-revoke").status_code == 200
        response = client.get(dpus("infra"))
    assert response.status_code == 401
    assert "revoked" in response.json()["message"]
    listed = {t["name"]: t for t in admin.get("/auth/v1/tokens").json()["items"]}
    assert listed["to-revoke"]["revoked"] is True
    assert all("sha256" not in t and "token" not in t for t in listed.values())


def test_the_bootstrap_admin_token_lives_in_the_store_and_keeps_full_rights(
    api: RunningServer, admin: httpx.Client
) -> None:
    who = admin.get("/auth/v1/whoami").json()
    assert who["token"] == auth_module.BOOTSTRAP_TOKEN
    assert who["grants"] == [{"role": "admin", "project": None}]
    assert not (api.data_dir / auth_module.TOKEN_HASHES_FILE).exists()


def test_tenant_sees_what_its_project_owns_or_leases_and_nothing_else(tenant: httpx.Client) -> None:
    names = {d["metadata"]["name"] for d in tenant.get(f"{BASE}/dpus").json()["items"]}
    assert names == {"leased-1"}
    assert tenant.get(dpus("infra", "leased-1")).status_code == 200
    infra = {d["metadata"]["name"] for d in tenant.get(dpus("infra")).json()["items"]}
    assert infra == {"leased-1"}


def test_another_projects_object_is_refused_without_revealing_it(tenant: httpx.Client, admin: httpx.Client) -> None:
    hidden = tenant.get(dpus("tenant-b", "b-own-1"))
    missing = tenant.get(dpus("tenant-b", "no-such-dpu"))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["message"] == "dpu 'b-own-1' not found in project 'tenant-b'"
    assert "MT3" not in hidden.text
    for method, body in (("PATCH", {"metadata": {"labels": {"x": "y"}}}), ("DELETE", None)):
        response = tenant.request(method, dpus("tenant-b", "b-own-1"), json=body, headers=MERGE)
        assert response.status_code == 404, response.text
    # a stale resourceVersion must not turn the 404 into a 409 that would confirm the object
    current = admin.get(dpus("tenant-b", "b-own-1")).json()
    current["metadata"]["resourceVersion"] = "1"
    assert tenant.put(dpus("tenant-b", "b-own-1"), json=current).status_code == 404
    assert tenant.get(dpus("infra", "spare-1")).status_code == 404


def test_tenant_uses_a_leased_dpu_but_never_reprograms_it(tenant: httpx.Client, admin: httpx.Client) -> None:
    item = dpus("infra", "leased-1")
    labelled = tenant.patch(item, json={"metadata": {"labels": {"team": "web"}}, "spec": {"held": True}}, headers=MERGE)
    assert labelled.status_code == 200, labelled.text
    refusals = {
        "image-flash": {"spec": {"image": "os-evil"}},
        "image-flash ": {"spec": {"flavor": "fast"}},
        "lease-change": {"spec": {"lessee": "tenant-b"}},
        "inventory-change": {"spec": {"serialNumber": "MT-OTHER"}},
    }
    for action, patch in refusals.items():
        response = tenant.patch(item, json=patch, headers=MERGE)
        assert response.status_code == 403, response.text
        assert action.strip() in response.json()["message"] and "tenant" in response.json()["message"]
    assert tenant.delete(item).status_code == 403
    assert tenant.patch(item + "/status", json={"status": {"phase": "Ready"}}, headers=MERGE).status_code == 403
    credential = {"kind": "Credential", "metadata": {"name": "bmc-root"}, "spec": {"username": "root", "password": "x"}}
    assert tenant.post(f"{BASE}/projects/tenant-a/credentials", json=credential).status_code == 403
    image = admin.get(item).json()["spec"]
    assert image["image"] == "os-1" and image["lessee"] == "tenant-a" and "flavor" not in image


def test_a_project_admin_cannot_reprogram_what_it_only_leases(
    api: RunningServer, admin: httpx.Client, fleet: None
) -> None:
    with as_token(api, make_token(admin, "a-admin", "admin@tenant-a")) as project_admin:
        response = project_admin.patch(dpus("infra", "leased-1"), json={"spec": {"image": "os-2"}}, headers=MERGE)
        assert response.status_code == 403
        # but it administers its own project: tokens within it, not beyond
        inside = project_admin.post("/auth/v1/tokens", json={"name": "a-viewer", "grants": ["viewer@tenant-a"]})
        assert inside.status_code == 201
        beyond = project_admin.post("/auth/v1/tokens", json={"name": "a-escalate", "grants": ["admin"]})
        assert beyond.status_code == 403


def test_a_viewer_cannot_read_secrets_and_nobody_gets_them(api: RunningServer, admin: httpx.Client) -> None:
    body = {"kind": "Credential", "metadata": {"name": "viewer-cred"}, "spec": {"username": "u", "password": "pw-1"}}
    assert admin.post(f"{BASE}/projects/infra/credentials", json=body).status_code == 201
    with as_token(api, make_token(admin, "v", "viewer")) as viewer:
        got = viewer.get(f"{BASE}/projects/infra/credentials/viewer-cred")
    assert got.status_code == 200 and "pw-1" not in got.text and got.json()["spec"]["passwordSet"] is True
