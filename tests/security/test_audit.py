"""The audit log: a record for every mutating call, a hash chain that shows tampering, no secrets."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from dpufleet.main import app
from dpufleet.store.schema import audit
from support.server import BASE, RunningServer

from .conftest import as_token, make_token

MERGE = {"Content-Type": "application/merge-patch+json"}


def records(admin: httpx.Client, limit: int = 1000) -> list[dict[str, object]]:
    items: list[dict[str, object]] = admin.get("/audit/v1/records", params={"limit": limit}).json()["items"]
    return items


def test_every_mutating_call_leaves_a_record(api: RunningServer, admin: httpx.Client) -> None:
    project = "au-" + uuid.uuid4().hex[:8]
    coll = f"{BASE}/projects/{project}/dpus"
    assert admin.post(coll, json={"kind": "DPU", "metadata": {"name": "d1"}}).status_code == 201
    assert admin.patch(coll + "/d1", json={"spec": {"image": "os-1"}}, headers=MERGE).status_code == 200
    assert admin.patch(coll + "/d1/status", json={"status": {"phase": "X"}}, headers=MERGE).status_code == 200
    assert admin.delete(coll + "/d1").status_code == 200
    with as_token(api, make_token(admin, f"aud-{project}", f"viewer@{project}")) as viewer:
        assert viewer.post(coll, json={"kind": "DPU", "metadata": {"name": "d2"}}).status_code == 403
    mine = [r for r in records(admin) if r["project"] == project]
    assert [(r["action"], r["result"], r["code"]) for r in mine] == [
        ("dpus:create", "Success", 200),
        ("dpus:patch", "Success", 200),
        ("dpus:status-update", "Success", 200),
        ("dpus:delete", "Success", 200),
        ("dpus:create", "Forbidden", 403),
    ]
    assert mine[1]["detail"] == "image-flash"
    assert mine[0]["subject"] == "admin" and mine[0]["roles"] == "admin" and mine[0]["source"] == "127.0.0.1"
    assert mine[4]["subject"] == f"aud-{project}" and mine[4]["roles"] == f"viewer@{project}"


def test_the_chain_verifies_and_tampering_names_the_record(api: RunningServer, admin: httpx.Client) -> None:
    admin.post(f"{BASE}/projects/chain/dpus", json={"kind": "DPU", "metadata": {"name": "c1"}})
    runner = CliRunner()
    env = {"DPUFLEET_SERVER": api.url, "DPUFLEET_TOKEN": api.token, "XDG_CONFIG_HOME": str(api.data_dir / "cfg")}
    ok = runner.invoke(app, ["audit", "verify"], env=env)
    assert ok.exit_code == 0 and "hash chain intact" in ok.stdout
    listed = runner.invoke(app, ["audit", "list", "--limit", "3"], env=env)
    assert listed.exit_code == 0 and "dpus:create" in listed.stdout
    victim = next(r for r in records(admin) if r["project"] == "chain")
    assert api.server is not None
    with api.server.store.transaction() as conn:  # an insider rewrites history
        conn.execute(update(audit).where(audit.c.seq == victim["seq"]).values(subject="someone-else"))
    broken = runner.invoke(app, ["audit", "verify"], env=env)
    assert broken.exit_code == 1
    assert f"audit log broken at record {victim['seq']}" in broken.stderr
    with api.server.store.transaction() as conn:  # put it back, so the module's other tests see a sound log
        conn.execute(update(audit).where(audit.c.seq == victim["seq"]).values(subject=victim["subject"]))
    assert admin.get("/audit/v1/verify").json()["ok"] is True


def test_secrets_never_reach_the_audit_log_or_the_logs(
    api: RunningServer, admin: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    password = "s3cret-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    body = {"kind": "Credential", "metadata": {"name": "bmc-admin"}, "spec": {"username": "root", "password": password}}
    assert admin.post(f"{BASE}/projects/sec/credentials", json=body).status_code == 201
    changed = admin.patch(
        f"{BASE}/projects/sec/credentials/bmc-admin", json={"spec": {"password": password + "2"}}, headers=MERGE
    )
    assert changed.status_code == 200
    token = make_token(admin, "secret-check", "viewer")
    everything = str(records(admin)) + caplog.text + str(admin.get("/auth/v1/tokens").json())
    assert password not in everything
    assert token not in everything
    credential_records = [r for r in records(admin) if r["kind"] == "Credential" and r["project"] == "sec"]
    assert {r["detail"] for r in credential_records} == {"bmc-credential-change"}
