"""Controlled resets as PowerActions against the emulated fleet: right device, right order, right refusals."""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
import pytest

from dpufleet.sim.runner import SimRunning
from support.server import RunningServer
from support.sushy import PASSWORD, SYSTEMS, USER, running_sushy

from .conftest import create, get, path, wait_for

_counter = itertools.count()


def reset(http: httpx.Client, kind: str, name: str, mode: str, project: str = "default", **spec: Any) -> str:
    action = f"pa-{next(_counter)}"
    doc = {
        "kind": "PowerAction",
        "metadata": {"name": action},
        "spec": {"target": {"kind": kind, "name": name}, "mode": mode, **spec},
    }
    resp = create(http, "poweractions", doc, project)
    assert resp.status_code == 201, resp.text
    return action


def finished(http: httpx.Client, action: str, timeout: float = 20.0) -> dict[str, Any]:
    done: dict[str, Any] = wait_for(
        f"poweraction/{action}",
        lambda: get(http, "poweractions", action),
        lambda a: (a.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        timeout,
    )
    return done


def name_of(dpu: Any) -> str:
    return f"dpu-{dpu.serial.lower()}"


def test_dpu_only_reboots_that_dpu_only(http: httpx.Client, site: SimRunning) -> None:
    host = site.fleet.hosts[0]
    target, other = host.dpus
    before = {d.id: d.boot_count for d in site.fleet.dpus}
    host_boots = host.boot_count
    action = finished(http, reset(http, "DPU", name_of(target), "dpu-only"))
    status = action["status"]
    assert status["phase"] == "Succeeded", status
    assert status["hostImpact"].startswith("dpu-only: the host stays up")
    assert [s["action"] for s in status["steps"]] == ["reset-dpu", "wait-dpu"]
    assert all(s["result"] == "Succeeded" and s["when"] for s in status["steps"])
    assert target.boot_count == before[target.id] + 1  # its BootProgress went round once
    assert target.boot_progress == "OSRunning"
    assert {d.id: d.boot_count for d in site.fleet.dpus if d is not target} == {
        k: v for k, v in before.items() if k != target.id
    }
    assert other.boot_progress == "OSRunning"
    assert host.boot_count == host_boots and host.os_alive


def test_host_only_leaves_the_dpus_running(http: httpx.Client, site: SimRunning) -> None:
    host = site.fleet.hosts[1]
    before = {d.id: d.boot_count for d in site.fleet.dpus}
    host_boots = host.boot_count
    action = finished(http, reset(http, "Host", host.id, "host-only"))
    status = action["status"]
    assert status["phase"] == "Succeeded", status
    assert [s["action"] for s in status["steps"]] == ["reset-host", "wait-host"]
    assert host.boot_count == host_boots + 1 and host.os_alive
    assert {d.id: d.boot_count for d in site.fleet.dpus} == before  # the DPU is not affected by the host
    assert all(d.boot_progress == "OSRunning" for d in host.dpus)


def test_both_resets_in_boot_order_dpu_first(http: httpx.Client, site: SimRunning) -> None:
    host = site.fleet.hosts[2]
    dpu = host.dpus[0]
    seen: list[tuple[int, int, bool]] = []  # (dpu boots, host boots, host OS up) while it runs
    dpu_boots, host_boots = dpu.boot_count, host.boot_count
    action_name = reset(http, "DPU", name_of(dpu), "both")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen.append((dpu.boot_count, host.boot_count, host.os_alive))
        if (get(http, "poweractions", action_name).get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.01)
    status = finished(http, action_name)["status"]
    assert status["phase"] == "Succeeded", status
    assert [s["action"] for s in status["steps"]] == ["reset-dpu", "wait-dpu", "reset-host", "wait-host"]
    assert "bootOrder dpu-first" in status["hostImpact"]
    # the host went down only after the DPU ran again
    down = [s for s in seen if not s[2]]
    assert down, "the host was never seen down"
    assert all(boots == dpu_boots + 1 for boots, _, _ in down)
    assert dpu.boot_count == dpu_boots + 1 and host.boot_count == host_boots + 1
    steps = status["steps"]
    assert steps[1]["finished"] <= steps[2]["when"]


def test_host_first_order(http: httpx.Client, site: SimRunning) -> None:
    host = site.fleet.hosts[2]
    resp = http.patch(
        path("hosts", host.id),
        json={"spec": {"bootOrder": "host-first"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    try:
        status = finished(http, reset(http, "DPU", name_of(host.dpus[1]), "both"))["status"]
        assert status["phase"] == "Succeeded", status
        assert [s["action"] for s in status["steps"]] == ["reset-host", "wait-host", "reset-dpu", "wait-dpu"]
    finally:
        http.patch(
            path("hosts", host.id),
            json={"spec": {"bootOrder": "dpu-first"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )


def test_all_dpus_of_host_one_after_another(http: httpx.Client, site: SimRunning) -> None:
    host = site.fleet.hosts[0]
    before = {d.id: d.boot_count for d in host.dpus}
    status = finished(http, reset(http, "Host", host.id, "all-dpus-of-host"))["status"]
    assert status["phase"] == "Succeeded", status
    assert [s["action"] for s in status["steps"]] == ["reset-dpu", "wait-dpu", "reset-dpu", "wait-dpu"]
    assert all(d.boot_count == before[d.id] + 1 for d in host.dpus)


def test_host_without_power_driver_fails_clearly(http: httpx.Client, site: SimRunning) -> None:
    doc = {"kind": "Host", "metadata": {"name": "bare-host"}, "spec": {}}
    assert create(http, "hosts", doc).status_code == 201
    status = finished(http, reset(http, "Host", "bare-host", "host-only"))["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "HostPowerNotConfigured"
    assert "host power driver not configured" in status["message"]


def test_failing_bmc_ends_failed_with_the_steps_reason(http: httpx.Client, site: SimRunning) -> None:
    dpu = site.fleet.hosts[1].dpus[1]
    control = httpx.Client(
        base_url=str(site.control_url), headers={"Authorization": f"Bearer {site.control_token}"}, timeout=10
    )
    resp = control.post("/sim/v1/faults", json={"dpu": dpu.id, "kind": "bmc-crash", "duration": None})
    assert resp.status_code == 201, resp.text
    try:
        status = finished(http, reset(http, "DPU", name_of(dpu), "dpu-only"), timeout=60)["status"]
    finally:
        control.delete("/sim/v1/faults", params={"dpu": dpu.id, "kind": "bmc-crash"})
        control.close()
    assert status["phase"] == "Failed", status
    assert status["reason"] == "BMCError"
    failed = [s for s in status["steps"] if s["result"] == "Failed"]
    assert len(failed) == 1 and failed[0]["action"] == "reset-dpu" and failed[0]["message"]
    assert failed[0]["message"] in status["message"]


def test_tenant_without_the_right_gets_403(api: RunningServer, http: httpx.Client, site: SimRunning) -> None:
    def token(name: str, *grants: str) -> httpx.Client:
        resp = http.post("/auth/v1/tokens", json={"name": name, "grants": list(grants)})
        assert resp.status_code == 201, resp.text
        return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {resp.json()['token']}"}, timeout=10)

    dpu = name_of(site.fleet.hosts[0].dpus[0])
    doc = {"kind": "PowerAction", "metadata": {"name": "viewer-try"}, "spec": {"target": {"kind": "DPU", "name": dpu}}}
    with token("power-viewer", "viewer@default") as viewer:
        resp = create(viewer, "poweractions", doc)
        assert resp.status_code == 403, resp.text
        assert "power" in resp.text
    # a tenant of another project may ask, but the action runs only on what its project owns or leases
    with token("power-tenant", "tenant@tenant-b") as tenant:
        resp = create(tenant, "poweractions", {**doc, "metadata": {"name": "tenant-try"}}, "tenant-b")
        assert resp.status_code == 201, resp.text
        status = wait_for(
            "tenant action",
            lambda: tenant.get(path("poweractions", "tenant-try", "tenant-b")).json(),
            lambda a: (a.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        )["status"]
        assert status["phase"] == "Failed" and status["reason"] == "TargetNotFound"
    # the write is audited with its sub-action
    entries = http.get("/audit/v1/records", params={"limit": 500}).json()
    text = str(entries)
    assert "power-action" in text


def test_a_host_that_waits_for_its_dpus_ready_starts_only_after_their_agents_report(
    http: httpx.Client, site: SimRunning, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dpufleet.inventory import reports

    monkeypatch.setattr(reports, "HEARTBEAT_WRITE_EVERY", 0.0)  # every report is stored (no throttle)
    host = site.fleet.hosts[1]
    dpu = host.dpus[0]

    def report() -> None:
        resp = http.post("/agent/v1/report", json={"serial": dpu.serial, "role": "dpu", "agentVersion": "test"})
        assert resp.status_code == 200, resp.text

    report()  # the DPU has an agent: the host will wait for it
    resp = http.patch(
        path("hosts", host.id),
        json={"spec": {"waitForDPUsReady": True}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    dpu_boots, host_boots = dpu.boot_count, host.boot_count
    action_name = reset(http, "DPU", name_of(dpu), "both")
    wait_for("the DPU booted again", lambda: dpu.boot_count, lambda boots: boots == dpu_boots + 1, 20)
    time.sleep(1.5)  # the DPU runs, but its agent has not reported: the host is not reset
    action = get(http, "poweractions", action_name)
    assert host.boot_count == host_boots and host.os_alive
    waiting = next(s for s in action["status"]["steps"] if s["action"] == "wait-dpu")
    assert "waiting for its agent to report" in (waiting.get("message") or ""), waiting
    report()  # the agent is back: the DPU is Ready to serve its host
    status = finished(http, action_name)["status"]
    assert status["phase"] == "Succeeded", status
    assert host.boot_count == host_boots + 1
    resp = http.patch(
        path("hosts", host.id),
        json={"spec": {"waitForDPUsReady": False}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200


def test_host_whose_bmc_ref_names_no_bmc_fails_naming_the_field(http: httpx.Client, site: SimRunning) -> None:
    doc = {"kind": "Host", "metadata": {"name": "lost-bmc-host"}, "spec": {"bmcRef": "no-such-bmc"}}
    assert create(http, "hosts", doc).status_code == 201
    status = finished(http, reset(http, "Host", "lost-bmc-host", "host-only"))["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "NoBMC"
    assert "spec.bmcRef" in status["message"] and "no-such-bmc" in status["message"]


def test_host_whose_bmc_has_no_credential_fails_naming_the_field(http: httpx.Client, site: SimRunning) -> None:
    bmc = {"kind": "BMC", "metadata": {"name": "anon-host-bmc"}, "spec": {"address": "http://127.0.0.1:9"}}
    assert create(http, "bmcs", bmc).status_code == 201
    doc = {"kind": "Host", "metadata": {"name": "anon-bmc-host"}, "spec": {"bmcRef": "anon-host-bmc"}}
    assert create(http, "hosts", doc).status_code == 201
    status = finished(http, reset(http, "Host", "anon-bmc-host", "host-only"))["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "CredentialsMissing"
    assert "spec.credentialsRef" in status["message"]


def test_host_still_pointing_at_sim_v1_is_told_to_use_its_bmc(http: httpx.Client, site: SimRunning) -> None:
    spec = {"powerURL": f"{site.control_url}/sim/v1/hosts/{site.fleet.hosts[0].id}"}
    assert create(http, "hosts", {"kind": "Host", "metadata": {"name": "old-host"}, "spec": spec}).status_code == 201
    status = finished(http, reset(http, "Host", "old-host", "host-only"))["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "HostPowerMigrate"
    assert "spec.bmcRef" in status["message"]


def test_each_host_shows_the_hardware_its_own_bmc_reports(http: httpx.Client, site: SimRunning) -> None:
    """A Host pointed at its BMC (spec.bmcRef) gets that BMC crawled, and its status the host's
    hardware as the BMC reports it over Redfish: serial, CPU model and count, memory."""
    for sim in site.fleet.hosts:
        host = wait_for(
            f"hosts/{sim.id} with its hardware",
            lambda sim=sim: get(http, "hosts", sim.id),
            lambda h: bool((h.get("status") or {}).get("hardware")),
            60.0,  # a crawl that timed out on a busy machine is retried after its backoff
        )
        hardware = host["status"]["hardware"]
        assert hardware["serialNumber"] == sim.serial
        assert (hardware["cpuModel"], hardware["cpuCount"]) == (sim.model.cpu_model, sim.model.cpu_count)
        assert hardware["memoryGiB"] == sim.model.memory_mib / 1024
        assert hardware["bmc"] == f"{sim.id}-bmc" and "/redfish/v1/Systems/" in hardware["system"]
        serial = next(c for c in hardware["consoles"] if c["source"] == hardware["system"])
        assert serial["kind"] == "serial" and serial["ports"] == {"SSH": 2200, "IPMI": 623}
        assert hardware["virtualMedia"].endswith("/Managers/BMC/VirtualMedia")


def test_a_host_powered_off_through_its_bmc_stays_off_until_powered_on(http: httpx.Client, site: SimRunning) -> None:
    """ForceOff through the host's own BMC (spec.bmcRef) powers the host off and cuts its slots' power (its
    DPUs go off with it); it stays off until a PowerAction with resetType On, which boots host and DPUs."""
    host = site.fleet.hosts[1]
    boots = host.boot_count
    off = finished(http, reset(http, "Host", host.id, "host-only", resetType="ForceOff"))["status"]
    assert off["phase"] == "Succeeded", off
    assert off["steps"][-1]["what"] == f"wait for host/{host.id} to power off"
    assert not host.powered and not host.os_alive
    assert all(str(d.power_state) == "Off" for d in host.dpus)
    time.sleep(1.0)  # more than a host reboot (0.45 s here): an off host does not come back by itself
    assert not host.powered and not host.os_alive and host.boot_count == boots

    restart = finished(http, reset(http, "Host", host.id, "host-only", resetType="ForceRestart"))["status"]
    assert restart["phase"] == "Failed" and "powered off" in restart["message"], restart  # the BMC's 409

    on = finished(http, reset(http, "Host", host.id, "host-only", resetType="On"))["status"]
    assert on["phase"] == "Succeeded", on
    assert host.powered and host.os_alive and host.boot_count == boots + 1
    wait_for(
        f"the DPUs of {host.id} running again",
        lambda: [d.boot_progress for d in host.dpus],
        lambda progress: progress == ["OSRunning"] * len(host.dpus),
        10.0,
    )


def test_host_console_prints_how_to_reach_the_hosts_console(
    api: RunningServer, http: httpx.Client, site: SimRunning, tmp_path: Any
) -> None:
    """`dpufleet host console NAME`: the commands for each console the host's BMC reports and has
    enabled (serial over SSH on the system's own port, IPMI SOL), at the BMC's address."""
    from typer.testing import CliRunner

    from dpufleet.main import app

    host = site.fleet.hosts[0]
    wait_for(f"hosts/{host.id} with its consoles", lambda: get(http, "hosts", host.id),
             lambda h: bool(((h.get("status") or {}).get("hardware") or {}).get("consoles")), 60.0)  # fmt: skip
    env = {"DPUFLEET_SERVER": api.url, "DPUFLEET_TOKEN": api.token, "XDG_CONFIG_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, ["host", "console", host.id, "--user", "admin"], env=env)
    assert result.exit_code == 0, result.output
    address = httpx.URL(site.host_bmcs[host.id]).host
    assert f"ssh -p 2200 admin@{address}" in result.output
    assert f"ipmitool -I lanplus -H {address} -p 623 -U admin" in result.output
    assert "graphical (KVMIP)" in result.output

    create(http, "hosts", {"kind": "Host", "metadata": {"name": "no-bmc-host"}, "spec": {}})
    missing = CliRunner().invoke(app, ["host", "console", "no-bmc-host"], env=env)
    assert missing.exit_code != 0 and "spec.bmcRef is not set" in missing.output
    assert "Traceback" not in missing.output


def test_a_host_whose_bmc_is_sushy_tools_restarts_and_powers_off_and_on(
    http: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A BMC this project did not write (sushy-tools) as a host's spec.bmcRef: it reports no boot mark
    (no BootProgress, no LastResetTime), so a restart is done once the host is On again; off and on follow
    its PowerState."""
    with running_sushy(tmp_path_factory.mktemp("sushy"), [SYSTEMS[0]]) as sushy:
        cred = {"kind": "Credential", "metadata": {"name": "sushy"}, "spec": {"username": USER, "password": PASSWORD}}
        assert create(http, "credentials", cred).is_success
        bmc = {
            "kind": "BMC",
            "metadata": {"name": "sushy-bmc"},
            "spec": {"address": sushy.url, "credentialsRef": "sushy"},
        }
        assert create(http, "bmcs", bmc).is_success
        host = {"kind": "Host", "metadata": {"name": "sushy-host"}, "spec": {"bmcRef": "sushy-bmc"}}
        assert create(http, "hosts", host).is_success
        restarted = finished(http, reset(http, "Host", "sushy-host", "host-only"))["status"]
        assert restarted["phase"] == "Succeeded", restarted
        assert "no boot mark" in restarted["steps"][-1]["message"]
        off = finished(http, reset(http, "Host", "sushy-host", "host-only", resetType="ForceOff"))["status"]
        assert off["phase"] == "Succeeded", off
        system = httpx.get(f"{sushy.url}/redfish/v1/Systems/{SYSTEMS[0]['uuid']}", auth=(USER, PASSWORD)).json()
        assert system["PowerState"] == "Off"
        on = finished(http, reset(http, "Host", "sushy-host", "host-only", resetType="On"))["status"]
        assert on["phase"] == "Succeeded", on
        system = httpx.get(f"{sushy.url}/redfish/v1/Systems/{SYSTEMS[0]['uuid']}", auth=(USER, PASSWORD)).json()
        assert system["PowerState"] == "On"
