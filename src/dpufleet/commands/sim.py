"""`dpufleet sim`: run an emulated fleet of hosts, Redfish BMCs and DPUs with their agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import httpx
import typer

from ..cli.common import UserError, note, options

sim_app = typer.Typer(help="Run an emulated fleet of hosts, BMCs and DPUs.", no_args_is_help=True)
fault_app = typer.Typer(help="Inject, clear and list faults in a running emulated fleet.", no_args_is_help=True)
sim_app.add_typer(fault_app, name="fault")


def _state_pointer() -> Path:
    """Where `sim up` notes the directory of the last fleet it started ($XDG_STATE_HOME/dpufleet/sim-dir)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "dpufleet" / "sim-dir"


def _default_sim_dir() -> Path | None:
    """--dir, else $DPUFLEET_SIM_DIR, else the directory of the last `sim up`."""
    env = os.environ.get("DPUFLEET_SIM_DIR")
    if env:
        return Path(env)
    with contextlib.suppress(OSError):
        return Path(_state_pointer().read_text().strip())
    return None


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
    directory: Path | None = typer.Option(
        None, "--dir", help="where OS roots, credentials and the control file go [$DPUFLEET_SIM_DIR, else temporary]"
    ),
    listen: str = typer.Option("127.0.0.1:0", "--listen", help="HOST:PORT for the BMCs (0: any free port)"),
    per_bmc_ports: bool = typer.Option(
        False, "--per-bmc-ports", help="one port per BMC (DPU and host BMCs) instead of /bmc/<id> and /hostbmc/<id>"
    ),
    host_bmcs_manage_dpus: bool = typer.Option(
        False,
        "--host-bmcs-manage-dpus",
        help="each host's BMC also shows its DPUs as systems of their own (DMTF's SmartNIC model)",
    ),
    tls: bool = typer.Option(False, "--tls", help="serve Redfish over HTTPS with a self-signed certificate"),
    latency: float = typer.Option(0.0, "--latency", min=0.0, help="seconds added to every BMC request"),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent", min=1, help="request slots per BMC"),
    time_scale: float = typer.Option(1.0, "--time-scale", min=0.0, help="scale of emulated boot/update times"),
    register: bool = typer.Option(
        True, "--register/--no-register", help="create credential/sim-site and discovery/sim"
    ),
    agents: bool = typer.Option(True, "--agents/--no-agents", help="run the dpufleet agent on every DPU and host"),
    network: bool = typer.Option(
        False, "--network", help="give DPUs a real Open vSwitch in network namespaces of their own (root)"
    ),
    network_dpus: int = typer.Option(1, "--network-dpus", min=1, help="with --network: how many DPUs get one"),
    services: bool = typer.Option(
        False, "--services", help="run the services placed on DPUs as real containers with runc (root)"
    ),
    services_dpus: int = typer.Option(1, "--services-dpus", min=1, help="with --services: how many DPUs run them"),
    host_relay: bool = typer.Option(
        False,
        "--host-relay",
        help="every host agent serves its DPUs the host relay: artifacts they have no route to, and their "
        "telemetry kept on the host while they are cut off",
    ),
    trusted_publishers: Path | None = typer.Option(
        None,
        "--trusted-publishers",
        help="with --services: each DPU's own trust store (JSON list of {name, class, publicKey}), as "
        "`dpufleet agent --trusted-publishers`",
    ),
    require_signed_services: bool = typer.Option(
        False, "--require-signed-services", help="with --services: the DPUs never run an unsigned artifact"
    ),
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
    if network:
        missing = [tool for tool in ("ovs-vswitchd", "ovsdb-server", "ovs-ofctl", "ip") if shutil.which(tool) is None]
        if missing:
            raise UserError(
                f"--network needs Open vSwitch and iproute2: {', '.join(missing)} not found (apt install openvswitch-switch iproute2)"
            )
        if os.geteuid() != 0:
            raise UserError("--network creates network namespaces: run it as root")
    if services:
        missing = [tool for tool in ("runc", "umoci", "nsenter") if shutil.which(tool) is None]
        if missing:
            raise UserError(f"--services needs runc and umoci: {', '.join(missing)} not found (apt install runc umoci)")
        if os.geteuid() != 0:
            raise UserError("--services runs containers with cgroup limits: run it as root")
    from .processes import check_trust_options

    check_trust_options(services, trusted_publishers, require_signed_services)
    config = options(ctx).config()
    talk = register or agents
    if directory is None and os.environ.get("DPUFLEET_SIM_DIR"):
        directory = Path(os.environ["DPUFLEET_SIM_DIR"])
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
        host_bmcs_manage_dpus=host_bmcs_manage_dpus,
        tls=tls,
        latency=latency,
        max_concurrent=max_concurrent,
        time_scale=time_scale,
        server=config.server if talk else None,
        token=config.token if talk else None,
        register=register,
        agents=agents,
        network=network,
        network_dpus=network_dpus,
        services=services,
        services_dpus=services_dpus,
        services_trusted_publishers=trusted_publishers,
        services_require_signed=require_signed_services,
        host_relay=host_relay,
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
            if sim_dir is not None:
                with contextlib.suppress(OSError):
                    pointer = _state_pointer()
                    pointer.parent.mkdir(parents=True, exist_ok=True)
                    pointer.write_text(str(sim_dir.resolve()) + "\n")
            print(f"fault injection: {running.control_url}/sim/v1/faults (`dpufleet sim fault --dir {sim_dir}`)")
            for dpu_id, plane in running.data_planes.items():
                print(
                    f"data plane of {dpu_id}: Open vSwitch {plane.agent_config().bridge} in netns {plane.dpu_ns} "
                    f"(p0, p1 to netns {plane.wire_ns}; pf0hpf, pf0vf0, pf0vf1 to netns {plane.host_ns}); "
                    f"OVS_RUNDIR={plane.rundir}"
                )
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
        with contextlib.suppress(OSError):  # forget this fleet if `sim fault` would still find it
            if sim_dir is not None and _state_pointer().read_text().strip() == str(sim_dir.resolve()):
                _state_pointer().unlink()
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.cleanup()
    note("emulated fleet stopped")


def _control(directory: Path | None) -> tuple[str, str]:
    from ..sim.control import CONTROL_FILE, read_control_file

    sim_dir = directory or _default_sim_dir()
    if sim_dir is None:
        raise UserError("which emulated fleet? pass --dir (the --dir of `dpufleet sim up`) or set DPUFLEET_SIM_DIR")
    try:
        data = read_control_file(sim_dir)
    except (OSError, ValueError):
        raise UserError(f"no running emulated fleet in {sim_dir} (no readable {CONTROL_FILE})") from None
    return str(data["url"]), str(data["token"])


def _call(directory: Path | None, method: str, path: str, **kwargs: Any) -> Any:
    url, token = _control(directory)
    try:
        resp = httpx.request(
            method, url + path, headers={"Authorization": f"Bearer {token}"}, timeout=15, verify=False, **kwargs
        )
    except httpx.HTTPError as exc:
        raise UserError(
            f"the emulated fleet at {url} does not answer ({type(exc).__name__}); is `sim up` running?"
        ) from None
    if resp.status_code >= 400:
        try:
            message = resp.json().get("error", resp.text)
        except ValueError:
            message = resp.text
        raise UserError(str(message))
    return resp.json()


_DIR_OPTION = typer.Option(None, "--dir", help="the sim's --dir [$DPUFLEET_SIM_DIR, else the last `sim up`]")


def _parse_duration(text: str | None) -> float | None:
    if text is None:
        return None
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise UserError(f"--for {text!r}: a duration like 30s, 2m or 1.5 (seconds)") from None
    if value <= 0:
        raise UserError("--for must be positive")
    return value


@sim_app.command("load")
def load_cmd(
    dpu: str = typer.Argument(..., help="sim id (host-000-dpu-0), serial, or object name (dpu-<serial>)"),
    load: float = typer.Argument(..., help="the workload on its cores, 0 (idle) to 1 (flat out)"),
    directory: Path | None = _DIR_OPTION,
) -> None:
    """Put a workload on an emulated DPU: its BMC's temperature and power sensors follow it."""
    if not 0 <= load <= 1:
        raise UserError(f"LOAD {load:g}: must be from 0 (idle) to 1 (flat out)")
    device = _call(directory, "POST", f"/sim/v1/devices/{dpu}/load", json={"load": load})
    print(f"{device['id']} ({device['name']}): load {device['load']:g}")


@fault_app.command("inject")
def fault_inject_cmd(
    dpu: str = typer.Argument(..., help="sim id (host-000-dpu-0), serial, or object name (dpu-<serial>)"),
    kind: str = typer.Argument(..., help="fault kind (see `dpufleet sim fault kinds`)"),
    duration: str | None = typer.Option(None, "--for", help="clear it by itself after this long (30s, 2m)"),
    directory: Path | None = _DIR_OPTION,
) -> None:
    """Inject a fault into an emulated DPU (or its host or BMC)."""
    fault = _call(
        directory, "POST", "/sim/v1/faults", json={"dpu": dpu, "kind": kind, "duration": _parse_duration(duration)}
    )
    until = f" for {fault['duration']:g}s" if fault.get("duration") else " until cleared"
    print(f"injected {fault['kind']} into {fault['dpu']}{until}")


@fault_app.command("clear")
def fault_clear_cmd(
    dpu: str = typer.Argument(..., help="sim id, serial or dpu-<serial>"),
    kind: str | None = typer.Argument(None, help="only this kind [all of the DPU's faults]"),
    directory: Path | None = _DIR_OPTION,
) -> None:
    """Clear a DPU's faults (all, or one kind)."""
    params = {"dpu": dpu, **({"kind": kind} if kind else {})}
    cleared = _call(directory, "DELETE", "/sim/v1/faults", params=params)["cleared"]
    if not cleared:
        print(f"no active fault to clear on {dpu}")
    for fault in cleared:
        print(f"cleared {fault['kind']} on {fault['dpu']}")


@fault_app.command("list")
def fault_list_cmd(
    directory: Path | None = _DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List the active faults."""
    faults = _call(directory, "GET", "/sim/v1/faults")["faults"]
    if as_json:
        print(json.dumps(faults, indent=2))
        return
    rows = [("DPU", "KIND", "STARTED", "REMAINING", "PHASE")]
    for f in faults:
        remaining = "-" if f["remaining"] is None else f"{f['remaining']:.0f}s"
        rows.append((f["dpu"], f["kind"], f["started"], remaining, f.get("phase") or "-"))
    if len(rows) == 1:
        print("no active faults")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@fault_app.command("kinds")
def fault_kinds_cmd() -> None:
    """The fault kinds (docs/faults.md says what each one looks like)."""
    from ..sim.faults import FaultKind

    for kind in FaultKind:
        print(kind.value)
