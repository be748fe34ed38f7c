"""The fleet benchmarks, run small: each starts its own server and emulated fleet, does the whole job and
prints its figures as one JSON object on stdout with `--json` (what scripts and CI read; progress and
the table go to stderr). Not a timing test: the figures are only checked to be there and consistent with
the work asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dpufleet.main import app

pytestmark = pytest.mark.timeout(240)


def run(*args: str, timeout: float = 220) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpufleet.main", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def bench_json(*args: str) -> dict[str, Any]:
    """The bench's stdout, which must be exactly one JSON object (and its exit status 0)."""
    proc = run(*args, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("\n") == 1, f"stdout holds more than the JSON object:\n{proc.stdout}"
    figures = json.loads(proc.stdout)
    assert isinstance(figures, dict)
    assert figures["bench"] == args[0]
    assert "dpufleet bench" in proc.stderr, "the table goes to stderr"
    return figures


def test_bench_api_counts_creates_lists_and_watch_events() -> None:
    figures = bench_json("api", "--objects", "20", "--watchers", "2")
    assert figures["objects"] == 20 and figures["watchers"] == 2 and figures["backend"] == "sqlite"
    assert figures["api_creates_per_second"] > 0 and figures["store_creates_per_second"] > 0
    assert 0 < figures["list_seconds_p50"] <= figures["list_seconds_max"]
    # every watcher sees every update (one per object, at most 300)
    assert figures["watch_events_delivered"] == 2 * 20 and figures["watch_events_missed"] == 0
    assert figures["watch_latency_ms_p50"] <= figures["watch_latency_ms_p99"]
    assert figures["errors"] == []


def test_bench_discovery_inventories_every_bmc() -> None:
    figures = bench_json("discovery", "--bmcs", "2", "--latency", "0", "--timeout", "120")
    assert figures["bmcs"] == figures["bmcs_inventoried"] == 2
    assert figures["seconds_total"] > 0 and figures["bmcs_per_minute"] > 0
    assert figures["server_peak_rss_mib"] > 0
    assert figures["machine"]["cpus"] >= 1 and len(figures["machine"]["load_average_before"]) == 1


def test_bench_schedule_places_every_instance_that_fits_and_reports_its_rate() -> None:
    figures = bench_json("schedule", "--dpus", "300", "--services", "60")
    assert figures["dpus"] == 300 and figures["services"] == 60
    assert figures["placements"] == figures["every_dpu_placements"] + figures["replica_placements"] > 0
    assert figures["placements_per_second"] > 0 and figures["peak_rss_mib"] > 0
    assert isinstance(figures["target_met"], bool)


def test_bench_runs_n_times_and_summarises_the_runs() -> None:
    """`--runs 2 --json`: one object, the median, min, max and spread of every figure and each run's own."""
    figures = bench_json("discovery", "--bmcs", "2", "--latency", "0", "--timeout", "120", "--runs", "2")
    assert figures["runs"] == 2 and len(figures["each"]) == 2
    assert all(run["bmcs_inventoried"] == 2 for run in figures["each"])
    assert figures["median"]["bmcs_inventoried"] == 2 and figures["spread_pct"]["bmcs_inventoried"] == 0
    low, mid, high = (figures[k]["seconds_total"] for k in ("min", "median", "max"))
    assert 0 < low <= mid <= high
    assert figures["machine"]["cpu_model"] and len(figures["machine"]["load_average_before"]) == 2


def test_bench_provision_provisions_every_dpu_and_reports_its_cost() -> None:
    figures = bench_json("provision", "--dpus", "3", "--poll", "0.2", "--timeout", "120")
    assert figures["poll_seconds"] == 0.2
    assert figures["dpus"] == figures["dpus_ready"] == 3 and figures["dpus_failed"] == 0
    assert figures["simple_update_requests"] == 3
    assert figures["dpus_per_second"] == pytest.approx(3 / figures["seconds_total"])
    assert figures["server_cpu_ms_per_dpu"] > 0 and figures["redfish_requests_per_dpu"] > 0
    assert set(figures["phase_mean_ms"]) <= {
        "Available", "PreparingHost", "StagingImage", "Installing", "Rebooting", "Configuring"
    }  # fmt: skip
    assert "Installing" in figures["phase_mean_ms"]


@pytest.mark.skipif(os.geteuid() != 0, reason="real containers need root")
def test_bench_services_runs_every_instance_in_a_real_container() -> None:
    from dpufleet.sim.oci import tools_missing

    if tools_missing():
        pytest.skip(f"not installed: {', '.join(tools_missing())}")
    figures = bench_json("services", "--dpus", "2", "--timeout", "120")
    assert figures["dpus"] == figures["instances_running"] == 2 and figures["instances_failed"] == 0
    assert 0 < figures["seconds_to_first_running"] <= figures["seconds_to_all_running"]
    assert figures["agent_cpu_ms_per_dpu"] > 0 and figures["instance_memory_mib_mean"] > 0
    assert figures["errors"] == []


def test_bench_telemetry_ingests_every_sample_sent_and_measures_a_real_agent_loop() -> None:
    import shutil

    if not (shutil.which("nats-server") or os.path.exists("/usr/sbin/nats-server")):
        pytest.skip("not installed: nats-server")
    figures = bench_json(
        "telemetry", "--dpus", "5", "--series", "10", "--rounds", "2", "--latency-seconds", "5", "--interval", "1"
    )
    assert figures["samples_sent"] == figures["samples_ingested"] == 5 * 10 * 2
    assert figures["samples_per_second"] > 0 and figures["federate_series"] == 5 * 10
    assert figures["latency_batches"] > 0 and 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"]
    assert figures["agent_collections"] >= 2 and figures["agent_series"] > 0, "the agent's loop ran, every class"
    assert 0 < figures["agent_cpu_share_pct"] < 100 and figures["agent_peak_rss_mib"] > 0
    assert figures["errors"] == []


def test_bench_rollout_completes_within_max_unavailable_and_reports_the_hardware_minimum() -> None:
    figures = bench_json("rollout", "--dpus", "4", "--max-unavailable", "50%", "--update-seconds", "0.5")
    assert figures["poll_seconds"] == 3.0, "without --poll: the controller's default, as users run it"
    assert figures["dpus"] == figures["dpus_ready"] == 4 and figures["dpus_failed"] == 0
    assert figures["max_unavailable"] == 2 and 1 <= figures["peak_unavailable"] <= 2
    assert figures["hardware_minimum_seconds"] == pytest.approx(1.0), "ceil(4 / 2) x 0.5 s"
    assert figures["overhead_seconds"] == pytest.approx(figures["seconds_total"] - 1.0)
    assert figures["reconcile_passes_per_dpu"]["DPUProvisioner"] > 0


def test_bench_chaos_detects_and_sees_the_recovery_of_its_fault() -> None:
    """Seed 4's one fault is a 6 s soft reset of the DPU's host: the DPU stays Healthy throughout."""
    figures = bench_json("chaos", "--dpus", "1", "--duration", "1", "--rate", "0.01", "--seed", "4", "--settle", "60")
    assert figures["faults_injected"] == 1 and figures["faults_by_kind"] == {"host-soft-reset": 1}
    assert figures["faults_on_dpus"] == 0
    assert figures["detection_seconds_p50"] is None, "nothing on the DPU to detect: null, not NaN"
    for leftover in ("undetected", "misdiagnosed", "unrecovered", "unaccounted"):
        assert figures[leftover] == []


def test_a_bench_the_system_fails_is_one_error_line_and_exit_1() -> None:
    """A database that cannot be opened, a real failure of the system under test, is no traceback."""
    proc = run("api", "--objects", "1", "--watchers", "1", "--db", "postgresql://nobody@127.0.0.1:9/none", "--json")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: bench api failed: OperationalError") and "Traceback" not in proc.stderr


def test_a_dropped_connection_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import dpufleet.bench.api

    def dropped(**_kwargs: object) -> None:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    monkeypatch.setattr(dpufleet.bench.api, "run_api_bench", dropped)
    result = CliRunner().invoke(app, ["bench", "api", "--json"])
    assert result.exit_code == 1
    assert result.stdout == ""
    machine, error = result.stderr.splitlines()  # the machine's conditions before the run, then the one line
    assert machine.startswith("machine: ")
    assert error == "error: bench api failed: RemoteProtocolError: Server disconnected without sending a response."


def test_a_connection_dropped_inside_an_exception_group_is_one_error_line_naming_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What asyncio.gather or a TaskGroup raises: the first real failure, the request it happened on."""
    import dpufleet.bench.provision

    url = "http://127.0.0.1:8740/apis/dpufleet.io/v1alpha1/projects/default/dpus/dpu-mt0001"

    def dropped(*_args: object, **_kwargs: object) -> None:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [httpx.ReadError("", request=httpx.Request("PATCH", url))])

    monkeypatch.setattr(dpufleet.bench.provision, "run_provision_bench", dropped)
    result = CliRunner().invoke(app, ["bench", "provision", "--json", "--runs", "2"])
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: bench provision failed in run 1 of 2: ReadError: the server closed the connection during PATCH {url}"
    )
