"""`dpufleet sim`: run an emulated fleet of hosts, Redfish BMCs and DPUs with their agents."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path

import httpx
import typer

from .common import UserError, note, options

sim_app = typer.Typer(help="Run an emulated fleet of hosts, BMCs and DPUs.", no_args_is_help=True)


@sim_app.command("profiles")
def profiles_cmd() -> None:
    """List the vendor profiles the emulator (and the hardware catalog) knows."""
    from ..sim.profiles import builtin_profiles

    rows = [("NAME", "VENDOR", "MODEL", "P/N", "CORES", "PORTS")]
    for p in builtin_profiles().values():
        ports = ",".join(f"{x.speed_gbps}G" for x in p.ports)
        rows.append((p.name, p.vendor, p.model, p.part_number, str(p.cpu.cores), ports))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@sim_app.command("up")
def up_cmd(
    ctx: typer.Context,
    hosts: int = typer.Option(3, "--hosts", min=0, help="emulated hosts"),
    dpus_per_host: int = typer.Option(1, "--dpus-per-host", min=0, max=8, help="DPUs in each host"),
    profile: list[str] = typer.Option(
        ["nvidia-bluefield-3"], "--profile", help="vendor profile; repeat to mix (host i gets profile i mod n)"
    ),
    seed: int = typer.Option(1, "--seed", help="same seed, same fleet (serials, MACs, slots)"),
    directory: Path | None = typer.Option(None, "--dir", help="where OS roots and credentials go [temporary]"),
    listen: str = typer.Option("127.0.0.1:0", "--listen", help="HOST:PORT for the BMCs (0: any free port)"),
    per_bmc_ports: bool = typer.Option(False, "--per-bmc-ports", help="one port per BMC instead of /bmc/<id>"),
    tls: bool = typer.Option(False, "--tls", help="serve Redfish over HTTPS with a self-signed certificate"),
    latency: float = typer.Option(0.0, "--latency", min=0.0, help="seconds added to every BMC request"),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent", min=1, help="request slots per BMC"),
    time_scale: float = typer.Option(1.0, "--time-scale", min=0.0, help="scale of emulated boot/update times"),
    register: bool = typer.Option(
        True, "--register/--no-register", help="create credential/sim-site and discovery/sim"
    ),
    agents: bool = typer.Option(True, "--agents/--no-agents", help="run the dpufleet agent on every DPU and host"),
) -> None:
    """Run an emulated fleet until Ctrl-C, reporting to the control plane (--server/DPUFLEET_SERVER)."""
    from ..server.runner import parse_listen
    from ..sim.profiles import builtin_profiles
    from ..sim.runner import SimOptions, run_sim

    known = builtin_profiles()
    for name in profile:
        if name not in known:
            raise UserError(f"--profile {name!r} is unknown; known profiles: {', '.join(sorted(known))}")
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    config = options(ctx).config()
    talk = register or agents
    tmp = None if directory else tempfile.TemporaryDirectory(prefix="dpufleet-sim-")
    sim_dir = directory if directory is not None else Path(tmp.name) if tmp else None
    opts = SimOptions(
        hosts=hosts,
        dpus_per_host=dpus_per_host,
        profiles=profile,
        seed=seed,
        directory=sim_dir,
        listen_host=host,
        port=port,
        per_bmc_ports=per_bmc_ports,
        tls=tls,
        latency=latency,
        max_concurrent=max_concurrent,
        time_scale=time_scale,
        server=config.server if talk else None,
        token=config.token if talk else None,
        register=register,
        agents=agents,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def ready(running: object) -> None:
            from ..sim.runner import SimRunning

            assert isinstance(running, SimRunning)
            n = len(running.fleet.dpus)
            print(f"emulated fleet up: {len(running.fleet.hosts)} hosts, {n} DPUs, {len(running.endpoints)} BMCs")
            for bmc_id, url in list(running.servers.endpoints.items())[:5]:
                print(f"  {bmc_id:24} {url}/redfish/v1")
            if len(running.endpoints) > 5:
                print(f"  ... and {len(running.endpoints) - 5} more (all listed in {sim_dir}/site-credentials.json)")
            print(f"site BMC credentials: {sim_dir}/site-credentials.json (mode 0600)")
            if talk:
                print(
                    f"reporting to {config.server}"
                    + (" (registered credential/sim-site, discovery/sim)" if register else "")
                )
            print("press Ctrl-C to stop")

        await run_sim(opts, stop, ready)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise UserError(f"cannot start the emulated BMCs on {listen}: {exc.strerror or exc}") from None
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach the control plane at {config.server}: {exc or type(exc).__name__}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.cleanup()
    note("emulated fleet stopped")
