"""The fleet benchmarks, run small: each starts its own server and emulated fleet, does the whole job and
prints its result table (what a user types to reproduce docs/benchmarks.md). Not a timing test: the
figures are only checked to be there and consistent with the work asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(240)


def bench(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dpufleet.main", "bench", *args],
        capture_output=True,
        text=True,
        timeout=220,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def row(out: str, metric: str) -> str:
    line = next(line for line in out.splitlines() if line.strip().startswith(metric))
    return line.strip()[len(metric) :].strip()


def test_bench_provision_provisions_every_dpu_and_reports_its_cost() -> None:
    out = bench("provision", "--dpus", "3", "--poll", "0.2", "--timeout", "120")
    assert row(out, "DPUs Ready").startswith("3 / 3")
    assert row(out, "DPUs failed").startswith("0")
    assert row(out, "SimpleUpdate requests").split()[:2] == ["3", "3"]
    assert row(out, "control plane CPU per DPU").split()[1] == "ms"


def test_bench_rollout_completes_within_max_unavailable_and_reports_the_hardware_minimum() -> None:
    out = bench("rollout", "--dpus", "4", "--max-unavailable", "50%", "--update-seconds", "0.5", "--poll", "0.2")
    assert row(out, "DPUs Ready").startswith("4 / 4")
    assert row(out, "peak unavailable (DPUSet status)").split()[0] in ("1", "2")
    assert row(out, "hardware minimum").startswith("1.0 s"), "ceil(4 / 2) x 0.5 s"
    assert "reconcile passes, DPUProvisioner" in out
