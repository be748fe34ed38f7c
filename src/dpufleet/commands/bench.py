"""`dpufleet bench`: benchmarks. Each imports its module only when run, so the CLI starts fast."""

from __future__ import annotations

import importlib

import typer

from ..cli.common import UserError

bench_app = typer.Typer(help="Measure dpufleet's performance.", no_args_is_help=True)


@bench_app.command("api")
def api(
    objects: int = typer.Option(10000, "--objects", min=1, max=1_000_000, help="DPU objects to create"),
    watchers: int = typer.Option(100, "--watchers", min=1, max=1000, help="concurrent watch streams"),
    db: str | None = typer.Option(None, "--db", help="database URL [default: a temporary SQLite file]"),
) -> None:
    """API throughput and watch latency against an embedded server."""
    try:
        module = importlib.import_module("dpufleet.bench.api")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dpufleet.bench"):
            raise UserError("the API benchmark (dpufleet.bench.api) is not part of this installation") from None
        raise
    module.run_api_bench(objects=objects, watchers=watchers, db=db)


@bench_app.command("discovery")
def discovery(
    bmcs: int = typer.Option(500, "--bmcs", min=1, max=5000, help="emulated BMCs (one DPU each)"),
    latency: float = typer.Option(0.3, "--latency", min=0.0, max=5.0, help="seconds per BMC request"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="give up after this many seconds"),
) -> None:
    """Discover and fully inventory N emulated BMCs; prints BMCs per minute and peak memory."""
    from ..bench.discovery import run_discovery_bench

    result = run_discovery_bench(bmcs, latency, timeout)
    if result.inventoried < result.bmcs:
        raise UserError(f"only {result.inventoried} of {result.bmcs} BMCs were inventoried within {timeout:g}s")


@bench_app.command("provision")
def provision(
    dpus: int = typer.Option(1000, "--dpus", min=1, max=20000, help="emulated DPUs (one BMC each) to provision"),
    poll: float = typer.Option(0.05, "--poll", min=0.0, max=10.0, help="seconds between the controller's BMC polls"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="give up after this many seconds"),
) -> None:
    """Provision N emulated DPUs (hardware delays zero); prints DPUs per second and time per phase."""
    from ..bench.provision import run_provision_bench

    result = run_provision_bench(dpus, poll, timeout)
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
) -> None:
    """Roll an image out to N emulated DPUs with a DPUSet; prints the total time next to the hardware minimum."""
    import re

    from ..bench.rollout import run_rollout_bench

    if not re.fullmatch(r"[1-9][0-9]*%?", max_unavailable) or (
        max_unavailable.endswith("%") and int(max_unavailable[:-1]) > 100
    ):
        raise UserError(f"--max-unavailable must be a count or a percentage (1%-100%), not {max_unavailable!r}")
    result = run_rollout_bench(dpus, max_unavailable, update_seconds, poll, timeout)
    if result.ready < result.dpus:
        raise UserError(f"only {result.ready} of {result.dpus} DPUs were updated within {timeout:g}s")


@bench_app.command("chaos")
def chaos(
    dpus: int = typer.Option(200, "--dpus", min=1, max=5000, help="emulated DPUs (one per host, one BMC each)"),
    duration: float = typer.Option(120.0, "--duration", min=1.0, max=3600.0, help="seconds of fault injection"),
    rate: float = typer.Option(0.5, "--rate", min=0.01, max=50.0, help="faults injected per second"),
    seed: int = typer.Option(1, "--seed", help="random seed (which DPU, which fault, how long)"),
    settle: float = typer.Option(120.0, "--settle", min=0.0, max=3600.0, help="seconds to wait for recovery after"),
) -> None:
    """Inject random faults into an emulated fleet; prints detection latency, time to recovery, leftovers."""
    from ..bench.chaos import run_chaos_bench

    result = run_chaos_bench(dpus, duration, rate, seed, settle)
    left = result.unrecovered + result.unaccounted + result.undetected + result.misdiagnosed
    if left:
        raise UserError(f"{len(left)} fault(s) not handled: see the lists above")
