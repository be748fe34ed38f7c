"""`dpufleet bench`: benchmarks. Each imports its module only when run, so the CLI starts fast.

Every bench takes `--json`: its progress and table go to stderr and stdout carries one JSON object of
named figures. A bench that fails on the way (the server it started stops answering, a connection
drops, a database cannot be opened) is one `error:` line and exit status 1, never a traceback; one
that finishes short of its goal prints its figures, then the `error:` line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import httpx
import typer

from ..cli.common import UserError

bench_app = typer.Typer(help="Measure dpufleet's performance.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="print one JSON object of named figures on stdout (progress: stderr)")


class Figures(Protocol):
    def figures(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Figures)


def _failures() -> tuple[type[BaseException], ...]:
    """What a bench run meets when the system under test fails (not a bug in the bench)."""
    from sqlalchemy.exc import SQLAlchemyError

    return (httpx.HTTPError, OSError, EOFError, TimeoutError, RuntimeError, SQLAlchemyError)


def run_bench(name: str, run: Callable[[], R], as_json: bool) -> R:
    """Run a bench; its failure as one line; with --json, print its figures."""
    try:
        result = run()
    except _failures() as exc:
        detail = " ".join(str(exc).split()) or "no detail"
        raise UserError(f"bench {name} failed: {type(exc).__name__}: {detail}") from None
    if as_json:
        from ..bench.harness import print_json

        print_json(result.figures())
    return result


@bench_app.command("api")
def api(
    objects: int = typer.Option(10000, "--objects", min=1, max=1_000_000, help="DPU objects to create"),
    watchers: int = typer.Option(100, "--watchers", min=1, max=1000, help="concurrent watch streams"),
    db: str | None = typer.Option(None, "--db", help="database URL [default: a temporary SQLite file]"),
    as_json: bool = JSON_OPTION,
) -> None:
    """API throughput and watch latency against an embedded server."""
    try:
        module = importlib.import_module("dpufleet.bench.api")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dpufleet.bench"):
            raise UserError("the API benchmark (dpufleet.bench.api) is not part of this installation") from None
        raise
    run_bench("api", lambda: module.run_api_bench(objects=objects, watchers=watchers, db=db, as_json=as_json), as_json)


@bench_app.command("discovery")
def discovery(
    bmcs: int = typer.Option(500, "--bmcs", min=1, max=5000, help="emulated BMCs (one DPU each)"),
    latency: float = typer.Option(0.3, "--latency", min=0.0, max=5.0, help="seconds per BMC request"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Discover and fully inventory N emulated BMCs; prints BMCs per minute and peak memory."""
    from ..bench.discovery import run_discovery_bench

    result = run_bench("discovery", lambda: run_discovery_bench(bmcs, latency, timeout, as_json=as_json), as_json)
    if result.inventoried < result.bmcs:
        raise UserError(f"only {result.inventoried} of {result.bmcs} BMCs were inventoried within {timeout:g}s")


@bench_app.command("provision")
def provision(
    dpus: int = typer.Option(1000, "--dpus", min=1, max=20000, help="emulated DPUs (one BMC each) to provision"),
    poll: float = typer.Option(0.05, "--poll", min=0.0, max=10.0, help="seconds between the controller's BMC polls"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Provision N emulated DPUs (hardware delays zero); prints DPUs per second and time per phase."""
    from ..bench.provision import run_provision_bench

    result = run_bench("provision", lambda: run_provision_bench(dpus, poll, timeout, as_json=as_json), as_json)
    if result.ready < result.dpus:
        raise UserError(f"only {result.ready} of {result.dpus} DPUs reached Ready within {timeout:g}s")


@bench_app.command("rollout")
def rollout(
    dpus: int = typer.Option(1000, "--dpus", min=1, max=20000, help="emulated DPUs (one per host) to update"),
    max_unavailable: str = typer.Option(
        "10%", "--max-unavailable", help="the DPUSet's maxUnavailable: a count or a percentage"
    ),
    update_seconds: float = typer.Option(
        2.0, "--update-seconds", min=0.01, max=600.0, help="emulated install + reboot time of one DPU"
    ),
    poll: float = typer.Option(0.05, "--poll", min=0.0, max=10.0, help="seconds between the provisioner's BMC polls"),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help="give up after this many seconds"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Roll an image out to N emulated DPUs with a DPUSet; prints the total time next to the hardware minimum."""
    import re

    from ..bench.rollout import run_rollout_bench

    if not re.fullmatch(r"[1-9][0-9]*%?", max_unavailable) or (
        max_unavailable.endswith("%") and int(max_unavailable[:-1]) > 100
    ):
        raise UserError(f"--max-unavailable must be a count or a percentage (1%-100%), not {max_unavailable!r}")
    result = run_bench(
        "rollout",
        lambda: run_rollout_bench(dpus, max_unavailable, update_seconds, poll, timeout, as_json=as_json),
        as_json,
    )
    if result.ready < result.dpus:
        raise UserError(f"only {result.ready} of {result.dpus} DPUs were updated within {timeout:g}s")


@bench_app.command("chaos")
def chaos(
    dpus: int = typer.Option(200, "--dpus", min=1, max=5000, help="emulated DPUs (one per host, one BMC each)"),
    duration: float = typer.Option(120.0, "--duration", min=1.0, max=3600.0, help="seconds of fault injection"),
    rate: float = typer.Option(0.5, "--rate", min=0.01, max=50.0, help="faults injected per second"),
    seed: int = typer.Option(1, "--seed", help="random seed (which DPU, which fault, how long)"),
    settle: float = typer.Option(120.0, "--settle", min=0.0, max=3600.0, help="seconds to wait for recovery after"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Inject random faults into an emulated fleet; prints detection latency, time to recovery, leftovers."""
    from ..bench.chaos import run_chaos_bench

    result = run_bench("chaos", lambda: run_chaos_bench(dpus, duration, rate, seed, settle, as_json=as_json), as_json)
    left = result.unrecovered + result.unaccounted + result.undetected + result.misdiagnosed
    if left:
        where = "the lists in the JSON object" if as_json else "the lists above"
        raise UserError(f"{len(left)} fault(s) not handled: see {where}")
