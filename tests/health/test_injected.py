"""The same contract with the emulator's own fault injection (dpufleet.sim.faults), when it is present."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import DETECTION_BOUND, Lab, diagnosis, healthy, history

faults = pytest.importorskip("dpufleet.sim.faults")


@pytest.mark.parametrize(
    ("index", "kind", "expected", "first_action"),
    [(8, "os-hang", "OSHang", "reboot"), (9, "power-loss", "PowerLoss", "power-on")],
)
def test_injected_fault_is_diagnosed_and_remediated(
    lab: Lab, index: int, kind: str, expected: str, first_action: str
) -> None:
    name, sim, _bmc = lab.dpu(index)
    before = len(history(lab.get(name)))
    start = time.monotonic()
    faults.inject(lab.fleet.fleet, sim.id, kind)
    lab.wait(expected, name, lambda d: diagnosis(d) == expected, timeout=DETECTION_BOUND + 10)
    assert time.monotonic() - start <= DETECTION_BOUND + 5  # the emulated watchdog takes its own time first
    dpu = lab.wait("recovered", name, lambda d: healthy(d) and ("recovered", "Recovered") in history(d)[before:], 20)
    assert history(dpu)[before] == (first_action, "Succeeded")


def test_describe_policy_and_debug_bundle(lab: Lab, tmp_path: Path) -> None:
    """An operator sees the diagnosis and history in `describe`, the policy, and gets a debug bundle."""
    from typer.testing import CliRunner

    from dpufleet.main import app

    name, _sim, _bmc = lab.dpu(8)  # the injected os-hang DPU above: rebooted, recovered
    base = ["--server", lab.api.url, "--token", lab.api.token]
    out = CliRunner().invoke(app, [*base, "describe", "dpu", name])
    assert out.exit_code == 0, out.output
    assert "Diagnosis:" in out.output and "Remediation history:" in out.output and "reboot" in out.output
    out = CliRunner().invoke(app, [*base, "health", "policy", "show"])
    assert out.exit_code == 0 and "name: fast" in out.output and "name: built-in" in out.output
    bundle = tmp_path / "b.tar.gz"
    out = CliRunner().invoke(app, [*base, "debug-bundle", name, "-o", str(bundle)])
    assert out.exit_code == 0, out.output
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        assert {f"{name}/dpu.json", f"{name}/bmc-logs.json", f"{name}/events.json", f"{name}/summary.txt"} <= names
        logs = json.loads(tar.extractfile(f"{name}/bmc-logs.json").read())  # type: ignore[union-attr]
    messages = [e["Message"] for entries in logs["logs"].values() for e in entries]
    assert any("watchdog" in m.lower() for m in messages)
    assert lab.fleet.password not in bundle.read_bytes().decode("latin-1")
