"""`dpufleet bench`: benchmarks. Each imports its module only when run, so the CLI starts fast.

Every bench takes `--json`: its progress and table go to stderr and stdout carries one JSON object of
named figures. Every bench takes `--runs N`: it runs N times in sequence, prints each run's table and
then a summary (median, min, max and spread of every numeric figure); with `--json` the one object is
the summary (`summary()`). Before each run it prints the machine's conditions (CPU model, cores,
memory, Python, the load average at that moment), and the JSON object carries them under "machine".

A bench that fails on the way (the server it started stops answering, a connection drops, a database
cannot be opened) is one `error:` line naming the failure (and the request, where it was one) and exit
status 1, never a traceback -- also when the failure arrives inside an exception group (asyncio.gather,
a TaskGroup). One that finishes short of its goal prints its figures, then the `error:` line. No bench
retries a request: a failure is reported, not hidden.
"""

from __future__ import annotations

import importlib
import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import httpx
import typer

from ..cli.common import UserError

bench_app = typer.Typer(help="Measure dpufleet's performance.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="print one JSON object of named figures on stdout (progress: stderr)")
RUNS_OPTION = typer.Option(
    1,
    "--runs",
    min=1,
    max=20,
    help="run N times in sequence; print each run, then the median, min, max and spread of every figure",
)
POLL_HELP = (
    "seconds between the provisioner's BMC polls [default: the controller's own, 3 s, as users run it: "
    "pushed BMC events end the waits, the polls are the fallback]"
)


class Figures(Protocol):
    def figures(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Figures)
Verdict = Callable[[Mapping[str, float]], bool]


def _failures() -> tuple[type[BaseException], ...]:
    """What a bench run meets when the system under test fails (not a bug in the bench)."""
    from sqlalchemy.exc import SQLAlchemyError

    return (httpx.HTTPError, OSError, EOFError, TimeoutError, RuntimeError, SQLAlchemyError)


def failure_in(exc: BaseException) -> BaseException | None:
    """The failure of the system under test that `exc` is or holds: itself, or the first one (depth first)
    in an exception group (asyncio.gather, a TaskGroup); None when it holds none (a bug: a traceback)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = failure_in(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, _failures()) else None


def describe_failure(exc: BaseException) -> str:
    """One line: the exception's type and message, and the request it happened on where it was one."""
    detail = " ".join(str(exc).split())
    if not detail and isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        detail = "the server closed the connection"
    detail = detail or "no detail"
    request: httpx.Request | None = None
    if isinstance(exc, httpx.HTTPError):
        try:
            request = exc.request
        except RuntimeError:  # raised without one
            request = None
    if request is not None and str(request.url) not in detail:
        detail += f" during {request.method} {request.url}"
    return f"{type(exc).__name__}: {detail}"


def _numbers(figures: Mapping[str, Any]) -> dict[str, float]:
    """The numeric figures (int or float, not bool, finite): the top-level ones, and those of a nested
    object one level down under dotted names ("phase_mean_ms.Installing")."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    found: dict[str, float] = {}
    for key, value in figures.items():
        if number(value):
            found[key] = value
        elif isinstance(value, Mapping):
            found.update({f"{key}.{sub}": v for sub, v in value.items() if number(v)})
    return found


def summary(
    name: str, each: list[dict[str, Any]], machine: dict[str, Any], verdict: Verdict | None = None
) -> dict[str, Any]:
    """The JSON object of N runs: median, min, max and spread (max - min, in % of the median) of every
    numeric figure present in every run; the verdict, where the bench has a target, from the medians."""
    numbers = [_numbers(figures) for figures in each]
    names = [key for key in numbers[0] if all(key in run for run in numbers[1:])]
    median = {key: statistics.median(run[key] for run in numbers) for key in names}
    low = {key: min(run[key] for run in numbers) for key in names}
    high = {key: max(run[key] for run in numbers) for key in names}
    spread: dict[str, float | None] = {}
    for key in names:
        width = high[key] - low[key]
        spread[key] = 100 * width / abs(median[key]) if median[key] else (0.0 if width == 0 else None)
    result: dict[str, Any] = {
        "bench": name,
        "runs": len(each),
        "machine": machine,
        "median": median,
        "min": low,
        "max": high,
        "spread_pct": spread,
    }
    if verdict is not None:
        result["target_met_median"] = verdict(median)
    result["each"] = each
    return result


def _value(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.3f}"


def run_bench(name: str, run: Callable[[], R], as_json: bool, runs: int = 1, verdict: Verdict | None = None) -> list[R]:
    """Run a bench `runs` times, each after printing the machine's conditions; a failure as one line;
    with --json, print the figures (one run) or the summary of all runs (`summary`)."""
    from rich.table import Table

    from ..bench.harness import bench_console, machine_conditions, print_json

    console = bench_console(as_json)
    results: list[R] = []
    loads: list[list[float]] = []
    machine: dict[str, Any] = {}
    for index in range(runs):
        now = machine_conditions()
        machine = machine or now.figures()
        loads.append(list(now.load_average))
        where = f" in run {index + 1} of {runs}" if runs > 1 else ""
        console.print(
            f"run {index + 1} of {runs}: {now.line()}" if runs > 1 else now.line(), markup=False, soft_wrap=True
        )
        try:
            results.append(run())
        except BaseException as exc:
            failure = failure_in(exc)
            if failure is None:
                raise
            raise UserError(f"bench {name} failed{where}: {describe_failure(failure)}") from None
    machine["load_average_before"] = loads
    if runs == 1:
        if as_json:
            print_json({**results[0].figures(), "machine": machine})
        return results
    summed = summary(name, [r.figures() for r in results], machine, verdict)
    table = Table(title=f"dpufleet bench {name}: {runs} runs", box=None)
    table.add_column("FIGURE")
    for column in ("MEDIAN", "MIN", "MAX", "SPREAD"):
        table.add_column(column, justify="right")
    for key, median in summed["median"].items():
        spread = summed["spread_pct"][key]
        table.add_row(
            key,
            _value(median),
            _value(summed["min"][key]),
            _value(summed["max"][key]),
            "-" if spread is None else f"{spread:.0f}%",
        )
    if "target_met_median" in summed:
        table.add_row("target met, from the medians", "yes" if summed["target_met_median"] else "no", "", "", "")
    console.print(table)
    if as_json:
        print_json(summed)
    return results


def check_each(results: list[R], problem: Callable[[R], str | None]) -> None:
    """The goal of every run: its problem as the `error:` line (each run's, numbered, for --runs N)."""
    problems = [(index, found) for index, r in enumerate(results) if (found := problem(r))]
    if not problems:
        return
    if len(results) == 1:
        raise UserError(problems[0][1])
    raise UserError("; ".join(f"run {index + 1}: {found}" for index, found in problems))


@bench_app.command("api")
def api(
    objects: int = typer.Option(10000, "--objects", min=1, max=1_000_000, help="DPU objects to create"),
    watchers: int = typer.Option(100, "--watchers", min=1, max=1000, help="concurrent watch streams"),
    db: str | None = typer.Option(None, "--db", help="database URL [default: a temporary SQLite file]"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """API throughput and watch latency against an embedded server."""
    try:
        module = importlib.import_module("dpufleet.bench.api")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dpufleet.bench"):
            raise UserError("the API benchmark (dpufleet.bench.api) is not part of this installation") from None
        raise
    run_bench(
        "api", lambda: module.run_api_bench(objects=objects, watchers=watchers, db=db, as_json=as_json), as_json, runs
    )


@bench_app.command("schedule")
def schedule(
    dpus: int = typer.Option(10_000, "--dpus", min=1, max=200_000, help="DPUs in the fleet snapshot"),
    services: int = typer.Option(1_000, "--services", min=1, max=100_000, help="DPUServices to place"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Place M services' instances on N DPUs with the scheduler's core; prints placements per second and peak memory."""
    from ..bench.schedule import TARGET_PER_SECOND, run_schedule_bench

    run_bench(
        "schedule",
        lambda: run_schedule_bench(dpus, services, as_json=as_json),
        as_json,
        runs,
        verdict=lambda median: median.get("placements_per_second", 0) >= TARGET_PER_SECOND,
    )


@bench_app.command("discovery")
def discovery(
    bmcs: int = typer.Option(500, "--bmcs", min=1, max=5000, help="emulated BMCs (one DPU each)"),
    latency: float = typer.Option(0.3, "--latency", min=0.0, max=5.0, help="seconds per BMC request"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Discover and fully inventory N emulated BMCs; prints BMCs per minute and peak memory."""
    from ..bench.discovery import run_discovery_bench

    results = run_bench(
        "discovery", lambda: run_discovery_bench(bmcs, latency, timeout, as_json=as_json), as_json, runs
    )
    check_each(
        results,
        lambda r: (
            f"only {r.inventoried} of {r.bmcs} BMCs were inventoried within {timeout:g}s"
            if r.inventoried < r.bmcs
            else None
        ),
    )


@bench_app.command("provision")
def provision(
    dpus: int = typer.Option(1000, "--dpus", min=1, max=20000, help="emulated DPUs (one BMC each) to provision"),
    poll: float | None = typer.Option(None, "--poll", min=0.0, max=10.0, help=POLL_HELP),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Provision N emulated DPUs (hardware delays zero); prints DPUs per second and time per phase."""
    from ..bench.provision import run_provision_bench

    results = run_bench("provision", lambda: run_provision_bench(dpus, poll, timeout, as_json=as_json), as_json, runs)
    check_each(
        results,
        lambda r: f"only {r.ready} of {r.dpus} DPUs reached Ready within {timeout:g}s" if r.ready < r.dpus else None,
    )


@bench_app.command("services")
def services(
    dpus: int = typer.Option(200, "--dpus", min=1, max=2000, help="emulated DPUs, each running one real container"),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Apply an every-DPU service to N emulated DPUs (real runc containers); time until every instance runs,
    with each agent's CPU and memory (needs root, runc, umoci, busybox)."""
    from ..bench.services import run_services_bench

    results = run_bench("services", lambda: run_services_bench(dpus, timeout, as_json=as_json), as_json, runs)
    check_each(
        results,
        lambda r: (
            f"only {r.running} of {r.dpus} instances running within {timeout:g}s: {'; '.join(r.errors[:3])}"
            if r.running < r.dpus
            else None
        ),
    )


@bench_app.command("telemetry")
def telemetry(
    dpus: int = typer.Option(1000, "--dpus", min=1, max=10000, help="DPUs publishing, one bus connection each"),
    series: int = typer.Option(200, "--series", min=1, max=5000, help="series (samples per batch) per DPU"),
    rounds: int = typer.Option(25, "--rounds", min=1, max=1000, help="batches each DPU publishes in the ingest"),
    interval: float = typer.Option(10.0, "--interval", min=1.0, max=60.0, help="seconds between a DPU's batches"),
    latency_seconds: float = typer.Option(
        60.0, "--latency-seconds", min=5.0, max=3600.0, help="how long the latency and agent measurement runs"
    ),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Samples per second from agents through the bus to the aggregator and its exposition, ingest latency
    at the collection interval, and one real agent's CPU and memory at that interval (needs nats-server)."""
    from ..bench.telemetry import run_telemetry_bench, targets_met

    results = run_bench(
        "telemetry",
        lambda: run_telemetry_bench(dpus, series, rounds, interval, latency_seconds, as_json=as_json),
        as_json,
        runs,
        verdict=targets_met,
    )
    check_each(results, lambda r: r.problem())


@bench_app.command("chains")
def chains(
    dpus: int = typer.Option(8, "--dpus", min=1, max=64, help="emulated DPUs, each with a real Open vSwitch"),
    count: int = typer.Option(500, "--chains", min=1, max=60000, help="service chains (one TCP port each)"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Apply N service chains to D emulated DPUs (a real OVS each); time until every chain's flows are in
    every switch, and how many flows per second one OVS takes (needs root and openvswitch-switch)."""
    from ..bench.chains import run_chains_bench

    results = run_bench("chains", lambda: run_chains_bench(dpus, count, timeout, as_json=as_json), as_json, runs)
    check_each(results, lambda r: "; ".join(r.errors[:3]) if r.errors else None)


@bench_app.command("rollout")
def rollout(
    dpus: int = typer.Option(1000, "--dpus", min=1, max=20000, help="emulated DPUs (one per host) to update"),
    max_unavailable: str = typer.Option(
        "10%", "--max-unavailable", help="the DPUSet's maxUnavailable: a count or a percentage"
    ),
    update_seconds: float = typer.Option(
        2.0, "--update-seconds", min=0.01, max=600.0, help="emulated install + reboot time of one DPU"
    ),
    poll: float | None = typer.Option(None, "--poll", min=0.0, max=10.0, help=POLL_HELP),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Roll an image out to N emulated DPUs with a DPUSet; prints the total time next to the hardware minimum."""
    import re

    from ..bench.rollout import run_rollout_bench

    if not re.fullmatch(r"[1-9][0-9]*%?", max_unavailable) or (
        max_unavailable.endswith("%") and int(max_unavailable[:-1]) > 100
    ):
        raise UserError(f"--max-unavailable must be a count or a percentage (1%-100%), not {max_unavailable!r}")
    results = run_bench(
        "rollout",
        lambda: run_rollout_bench(dpus, max_unavailable, update_seconds, poll, timeout, as_json=as_json),
        as_json,
        runs,
        verdict=rollout_target_met,
    )
    check_each(
        results,
        lambda r: f"only {r.ready} of {r.dpus} DPUs were updated within {timeout:g}s" if r.ready < r.dpus else None,
    )


def rollout_target_met(median: Mapping[str, float]) -> bool:
    """The rollout's target from the medians of N runs: every DPU Ready, and the median time within the
    target (the hardware minimum + 5% + 5 s)."""
    try:
        return median["dpus_ready"] >= median["dpus"] and median["seconds_total"] <= median["target_seconds"]
    except KeyError:  # a figure missing from some run: not met
        return False


@bench_app.command("chaos")
def chaos(
    dpus: int = typer.Option(200, "--dpus", min=1, max=5000, help="emulated DPUs (one per host, one BMC each)"),
    duration: float = typer.Option(120.0, "--duration", min=1.0, max=3600.0, help="seconds of fault injection"),
    rate: float = typer.Option(0.5, "--rate", min=0.01, max=50.0, help="faults injected per second"),
    seed: int = typer.Option(1, "--seed", help="random seed (which DPU, which fault, how long)"),
    settle: float = typer.Option(120.0, "--settle", min=0.0, max=3600.0, help="seconds to wait for recovery after"),
    as_json: bool = JSON_OPTION,
    runs: int = RUNS_OPTION,
) -> None:
    """Inject random faults into an emulated fleet; prints detection latency, time to recovery, leftovers."""
    from ..bench.chaos import ChaosBenchResult, run_chaos_bench

    results = run_bench(
        "chaos", lambda: run_chaos_bench(dpus, duration, rate, seed, settle, as_json=as_json), as_json, runs
    )
    where = ("the lists in the JSON object" + ("'s each" if runs > 1 else "")) if as_json else "the lists above"

    def unhandled(r: ChaosBenchResult) -> str | None:
        left = r.unrecovered + r.unaccounted + r.undetected + r.misdiagnosed
        return f"{len(left)} fault(s) not handled: see {where}" if left else None

    check_each(results, unhandled)
