"""DMTF's own Redfish Service Validator finds no failure in an emulated BMC; HTTPS works."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dpufleet.sim.fleet import build_fleet, fleet_in_thread
from dpufleet.sim.profiles import builtin_profiles
from dpufleet.sim.redfish.schema import csdl_directory, missing_namespaces
from dpufleet.sim.runner import SimOptions, sim_in_thread
from support.net import poll

from .conftest import PASSWORD, USER, make_fleet

# $DPUFLEET_REDFISH_CSDL, else shared/redfish/csdl beside the project (a clone elsewhere sets the variable)
CSDL = csdl_directory() or Path(__file__).resolve().parents[2].parent / "shared" / "redfish" / "csdl"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _validator_command() -> list[str]:
    script = Path(sys.executable).with_name("rf_service_validator")
    if script.exists():
        return [str(script)]
    found = shutil.which("rf_service_validator")
    if found:
        return [found]
    return [sys.executable, "-m", "redfish_service_validator.console_scripts"]


def _need_csdl() -> None:
    if not CSDL.is_dir():
        if IN_CI:
            pytest.fail(f"DMTF CSDL schemas missing at {CSDL} (CI=true: the validator must run)")
        pytest.skip(f"DMTF CSDL schemas not present at {CSDL} (set DPUFLEET_REDFISH_CSDL to their directory)")


def test_every_schema_version_served_exists_in_the_dmtf_csdl():
    _need_csdl()
    assert missing_namespaces(CSDL) == []


@pytest.mark.parametrize("profile", sorted(builtin_profiles()))  # every vendor profile the emulator ships
def test_dmtf_service_validator_reports_zero_failures(tmp_path: Path, profile: str):
    _need_csdl()
    fleet = build_fleet(
        1,
        1,
        [profile],
        seed=99,
        directory=tmp_path / "fleet",
        username=USER,
        password_for=lambda _id: PASSWORD,
        time_scale=0.002,
    )
    with fleet_in_thread(fleet, per_bmc_ports=True) as running:
        url = next(iter(running.endpoints.values()))
        root = url + "/redfish/v1"
        # Put a session, a finished task and log entries in the tree so they are validated too.
        assert (
            httpx.post(root + "/SessionService/Sessions", json={"UserName": USER, "Password": PASSWORD}).status_code
            == 201
        )
        started = httpx.post(
            root + "/UpdateService/Actions/UpdateService.SimpleUpdate",
            json={"ImageURI": "http://127.0.0.1:9/images/os-2.0.bfb"},
            auth=(USER, PASSWORD),
        )
        assert started.status_code == 202
        # An event subscription, POST codes (a reboot) and a fault's log entries are validated too.
        assert (
            httpx.post(
                root + "/EventService/Subscriptions",
                auth=(USER, PASSWORD),
                json={"Destination": "http://127.0.0.1:9/events", "Protocol": "Redfish", "Context": "validator"},
            ).status_code
            == 201
        )
        assert (
            httpx.post(
                root + "/Systems/DPU/Actions/ComputerSystem.Reset",
                auth=(USER, PASSWORD),
                json={"ResetType": "ForceRestart"},
            ).status_code
            == 204
        )
        from dpufleet.sim.faults import inject

        inject(fleet, fleet.dpus[0].id, "pcie-aer")
        task_url = url + started.headers["Location"]
        poll(
            "the update task to complete",
            lambda: httpx.get(task_url, auth=(USER, PASSWORD)).json()["TaskState"],
            lambda state: state == "Completed",
            timeout=10,
            interval=0.02,
        )
        passed = _validate(url, USER, PASSWORD, tmp_path / "logs")
    assert passed > 500


def _validate(url: str, user: str, password: str, logdir: Path) -> int:
    """Run DMTF's validator against the Redfish service at `url`; assert no failure; the passes."""
    result = subprocess.run(
        [
            *_validator_command(),
            f"--rhost={url}", f"--user={user}", f"--password={password}", "--authtype", "Basic",
            "--schema_directory", str(CSDL), "--skipschema", "--logdir", str(logdir),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    summary = re.search(r"\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", result.stdout)
    assert summary is not None, result.stdout[-3000:] + result.stderr[-3000:]
    passed, _warned, failed, _untested = (int(g) for g in summary.groups())
    assert failed == 0, result.stdout[-5000:]
    assert result.returncode == 0
    return passed


@pytest.mark.parametrize("manages_dpus", [False, True], ids=["host-only", "smartnic-model"])
def test_dmtf_service_validator_reports_zero_failures_on_the_emulated_host_bmc(tmp_path: Path, manages_dpus: bool):
    """The host's own BMC, on a port of its own (`dpufleet sim --per-bmc-ports`), after a restart and a
    boot override: what the product drives a host through is a Redfish service by DMTF's measure; with
    `--host-bmcs-manage-dpus` it shows the host's DPUs too, as DMTF's SmartNIC model does."""
    _need_csdl()
    options = SimOptions(
        hosts=1, dpus_per_host=2, profiles=["nvidia-bluefield-3"], seed=7, directory=tmp_path / "fleet",
        time_scale=0.002, per_bmc_ports=True, register=False, agents=False, host_bmcs_manage_dpus=manages_dpus,
    )  # fmt: skip
    with sim_in_thread(options) as running:
        url = running.host_bmcs[running.fleet.hosts[0].id]
        assert "/hostbmc/" not in url  # the root of its own port
        auth = (running.username, running.password)
        system = url + "/redfish/v1/Systems/System"
        patched = httpx.patch(system, auth=auth, json={"Boot": {"BootSourceOverrideTarget": "Pxe",
                                                                "BootSourceOverrideEnabled": "Once"}})
        assert patched.status_code == 204
        assert httpx.get(system, auth=auth).json()["@odata.id"] == "/redfish/v1/Systems/System"
        systems = httpx.get(url + "/redfish/v1/Systems", auth=auth).json()["Members"]
        assert len(systems) == (3 if manages_dpus else 1)
        passed = _validate(url, running.username, running.password, tmp_path / "logs")
    assert passed > (150 if manages_dpus else 50)


def test_https_with_a_self_signed_certificate(tmp_path: Path):
    fleet = make_fleet(tmp_path / "fleet", hosts=1, dpus_per_host=1)
    with fleet_in_thread(fleet, tls=True) as running:
        assert running.cert is not None
        url = next(iter(running.service_root(b) for b in running.endpoints))
        assert url.startswith("https://127.0.0.1:")
        response = httpx.get(
            url + "/Systems/DPU",
            auth=(USER, PASSWORD),
            verify=ssl.create_default_context(cafile=str(running.cert.cert)),
        )
        assert response.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)  # the default trust store does not know the emulator's certificate
        assert (running.cert.key.stat().st_mode & 0o777) == 0o600


def test_hundreds_of_bmcs_share_one_port(tmp_path: Path):
    fleet = build_fleet(
        100,
        2,
        ["nvidia-bluefield-3", "amd-pensando-dsc", "intel-ipu-e2100"],
        seed=5,
        username=USER,
        password_for=lambda _id: PASSWORD,
    )
    assert len(fleet.bmcs) == 200
    with fleet_in_thread(fleet) as running, httpx.Client(auth=(USER, PASSWORD)) as client:
        assert len({httpx.URL(u).port for u in running.endpoints.values()}) == 1
        for bmc_id in running.endpoints:
            system = client.get(running.service_root(bmc_id) + "/Systems/DPU").json()
            assert system["SerialNumber"] == fleet.bmcs[bmc_id].dpu.serial
