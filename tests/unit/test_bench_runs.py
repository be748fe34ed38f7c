"""`dpufleet bench ... --runs N` and its honesty: the summary of N runs (median, min, max, spread), the
machine's conditions, and a failure -- also one inside an exception group -- as one line naming it."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.bench.harness import machine_conditions
from dpufleet.bench.provision import controller_env
from dpufleet.cli.common import UserError
from dpufleet.commands.bench import rollout_target_met, run_bench, summary


@dataclass
class Fake:
    values: dict[str, Any]

    def figures(self) -> dict[str, Any]:
        return self.values


def test_machine_conditions_reads_cpu_memory_cores_python_and_the_load_now(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000 kB\n")
    machine = machine_conditions(cpuinfo, meminfo)
    assert machine.cpu_model == "AMD EPYC 7B13 64-Core Processor"
    assert machine.memory_total_mib == pytest.approx(24000.0)
    assert machine.cpus == os.cpu_count() and 1 <= machine.cpus_usable <= machine.cpus
    assert machine.python == platform.python_version()
    assert len(machine.load_average) == 3 and all(v >= 0 for v in machine.load_average)
    assert machine.figures() == {
        "cpu_model": "AMD EPYC 7B13 64-Core Processor",
        "cpus": machine.cpus,
        "cpus_usable": machine.cpus_usable,
        "memory_total_mib": pytest.approx(24000.0),
        "python": platform.python_version(),
    }
    line = machine.line()
    assert "AMD EPYC 7B13" in line and "23.4 GiB" in line and "load average" in line


def test_machine_conditions_without_proc_files_says_unknown(tmp_path: Path) -> None:
    machine = machine_conditions(tmp_path / "none", tmp_path / "none")
    assert machine.cpu_model == "unknown" and machine.memory_total_mib is None
    assert "memory unknown" in machine.line()


def test_machine_conditions_of_this_machine() -> None:
    machine = machine_conditions()
    assert machine.cpu_model  # "unknown" on a CPU that names no model (some ARM kernels)
    assert machine.memory_total_mib is None or machine.memory_total_mib > 0


def test_summary_median_min_max_spread_of_every_numeric_figure_in_every_run() -> None:
    each = [
        {"bench": "x", "seconds_total": 10.0, "dpus": 4, "target_met": True, "errors": [], "phase_mean_ms": {"A": 1.0}},
        {"bench": "x", "seconds_total": 14.0, "dpus": 4, "target_met": False, "errors": [], "phase_mean_ms": {"A": 3.0}},
        {"bench": "x", "seconds_total": 12.0, "dpus": 4, "target_met": True, "errors": ["e"], "refill_ms_mean": 5.0},
    ]
    machine = {"cpu_model": "m", "load_average_before": [[0.1, 0.2, 0.3]] * 3}
    result = summary("x", each, machine)
    assert list(result) == ["bench", "runs", "machine", "median", "min", "max", "spread_pct", "each"]
    assert result["bench"] == "x" and result["runs"] == 3 and result["machine"] is machine
    # bools, strings, lists are no figures to summarise; refill_ms_mean and phase_mean_ms.A are not in every run
    assert result["median"] == {"seconds_total": 12.0, "dpus": 4}
    assert result["min"] == {"seconds_total": 10.0, "dpus": 4}
    assert result["max"] == {"seconds_total": 14.0, "dpus": 4}
    assert result["spread_pct"] == {"seconds_total": pytest.approx(100 * 4 / 12), "dpus": 0.0}
    assert result["each"] == each


def test_summary_of_nested_figures_under_dotted_names_and_of_unmeasured_ones() -> None:
    each = [
        {"phase_mean_ms": {"Installing": 100.0, "Rebooting": 50.0}, "p99": None, "zero": 0, "nan": float("nan")},
        {"phase_mean_ms": {"Installing": 300.0, "Rebooting": 50.0}, "p99": 1.0, "zero": 0, "nan": 1.0},
    ]
    result = summary("x", each, {})
    assert result["median"] == {"phase_mean_ms.Installing": 200.0, "phase_mean_ms.Rebooting": 50.0, "zero": 0}
    assert result["spread_pct"]["phase_mean_ms.Installing"] == pytest.approx(100.0)
    assert result["spread_pct"]["zero"] == 0.0, "all runs 0: no spread"


def test_the_rollout_verdict_of_n_runs_comes_from_the_medians() -> None:
    runs = [
        {"dpus": 10, "dpus_ready": 10, "seconds_total": s, "target_seconds": 10.0, "target_met": s <= 10.0}
        for s in (9.0, 11.0, 9.5)
    ]
    assert summary("rollout", runs, {}, rollout_target_met)["target_met_median"] is True
    runs[2]["seconds_total"] = 12.0
    assert summary("rollout", runs, {}, rollout_target_met)["target_met_median"] is False
    assert rollout_target_met({"seconds_total": 1.0}) is False, "a figure missing: not met"


def test_run_bench_runs_n_times_prints_the_machine_before_each_and_one_summary_object(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[int] = []

    def run() -> Fake:
        calls.append(1)
        return Fake({"bench": "rollout", "dpus": 2, "dpus_ready": 2, "seconds_total": float(len(calls)),
                     "target_seconds": 2.5, "target_met": len(calls) <= 2})  # fmt: skip

    results = run_bench("rollout", run, as_json=True, runs=3, verdict=rollout_target_met)
    assert len(results) == len(calls) == 3
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    figures = json.loads(out)
    assert figures["runs"] == 3 and figures["median"]["seconds_total"] == 2.0
    assert figures["min"]["seconds_total"] == 1.0 and figures["max"]["seconds_total"] == 3.0
    assert figures["spread_pct"]["seconds_total"] == pytest.approx(100.0)
    assert figures["target_met_median"] is True
    assert [run["seconds_total"] for run in figures["each"]] == [1.0, 2.0, 3.0]
    machine = figures["machine"]
    assert {"cpu_model", "cpus", "cpus_usable", "memory_total_mib", "python"} <= set(machine)
    assert len(machine["load_average_before"]) == 3 and all(len(load) == 3 for load in machine["load_average_before"])
    assert err.count("machine: ") == 3 and "run 1 of 3: machine: " in err and "run 3 of 3: machine: " in err
    assert "dpufleet bench rollout: 3 runs" in err and "target met, from the medians" in err


def test_run_bench_once_prints_the_figures_as_before_with_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    run_bench("api", lambda: Fake({"bench": "api", "objects": 1}), as_json=True)
    out, err = capsys.readouterr()
    figures = json.loads(out)
    assert figures["bench"] == "api" and figures["objects"] == 1
    assert len(figures["machine"]["load_average_before"]) == 1
    assert set(figures) == {"bench", "objects", "machine"}
    assert err.startswith("machine: ")


def _dropped(method: str, url: str) -> httpx.ReadError:
    return httpx.ReadError("", request=httpx.Request(method, url))


URL = "http://127.0.0.1:8740/apis/dpufleet.io/v1alpha1/projects/default/dpus/dpu-mt0001"


def test_a_dropped_connection_in_an_exception_group_is_one_line_naming_the_request() -> None:
    def run() -> Fake:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [_dropped("PATCH", URL)])

    with pytest.raises(UserError) as caught:
        run_bench("provision", run, as_json=True)
    message = str(caught.value)
    assert message == f"bench provision failed: ReadError: the server closed the connection during PATCH {URL}"
    assert "\n" not in message


def test_the_first_real_failure_of_nested_groups_is_reported_and_the_run_named() -> None:
    import asyncio

    def run() -> Fake:
        inner = BaseExceptionGroup("gather", [asyncio.CancelledError(), _dropped("GET", URL)])
        raise BaseExceptionGroup("outer", [asyncio.CancelledError(), inner, httpx.ConnectError("refused")])

    with pytest.raises(UserError) as caught:
        run_bench("rollout", run, as_json=False, runs=2)
    assert str(caught.value) == (
        f"bench rollout failed in run 1 of 2: ReadError: the server closed the connection during GET {URL}"
    )


def test_a_status_error_names_its_url_once_and_a_bug_in_a_group_is_a_traceback() -> None:
    request = httpx.Request("GET", URL)
    response = httpx.Response(503, request=request)

    def unavailable() -> Fake:
        response.raise_for_status()
        raise AssertionError("unreachable")

    with pytest.raises(UserError) as caught:
        run_bench("chaos", unavailable, as_json=True)
    assert str(caught.value).count(URL) == 1 and str(caught.value).startswith("bench chaos failed: HTTPStatusError:")

    def bug() -> Fake:
        raise ExceptionGroup("bug", [KeyError("items")])

    with pytest.raises(ExceptionGroup):
        run_bench("chaos", bug, as_json=True)


def test_the_fleet_benches_poll_at_the_controllers_default_unless_told() -> None:
    assert "DPUFLEET_PROVISIONING_POLL_SECONDS" not in controller_env(None)
    assert controller_env(0.2)["DPUFLEET_PROVISIONING_POLL_SECONDS"] == "0.2"
