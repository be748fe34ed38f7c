"""The commands that run a part of the control plane on this machine: the API server, the
controllers, the demo and the DPU/host agent (`dpufleet server|controller|demo|agent`)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from pathlib import Path

import typer

from ..cli.common import UserError, options


def _log_to_stderr(level: int) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def _data_dir(value: Path | None) -> Path:
    from ..server.runner import default_data_dir

    return value or default_data_dir()


def server_cmd(
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="state, database and admin token [default: $DPUFLEET_DATA_DIR or ~/.local/share/dpufleet]",
    ),
    db: str | None = typer.Option(
        None, "--db", help="database URL (sqlite:///... or postgresql://...) [default: SQLite in the data dir]"
    ),
    listen: str = typer.Option("127.0.0.1:8740", "--listen", help="HOST:PORT to serve the API on"),
    controllers: str = typer.Option(
        "process",
        "--controllers",
        help="process: the controllers in a child process (both cores); in-process: in this process; "
        "none: the API only (run 'dpufleet controller' separately)",
    ),
    no_controllers: bool = typer.Option(False, "--no-controllers", help="the same as --controllers none"),
    agent_listen: str = typer.Option(
        "127.0.0.1:8741", "--agent-listen", help="HOST:PORT of the agent listener (mTLS, fleet certificates)"
    ),
    agent_advertise: str | None = typer.Option(
        None, "--agent-advertise", help="host name agents use to reach the agent listener (in its certificate)"
    ),
    telemetry_bus: str = typer.Option(
        "embedded",
        "--telemetry-bus",
        help="embedded: run nats-server as a child on 127.0.0.1; nats://[user:password@]host:port: your own "
        "bus (the aggregator's credentials in the URL); none: no telemetry",
    ),
    otlp_endpoint: str | None = typer.Option(
        None,
        "--otlp-endpoint",
        help="push the fleet's telemetry to this OTLP/HTTP collector (http://host:4318): metrics to /v1/metrics, "
        "logs and events to /v1/logs",
    ),
    otlp_header: list[str] = typer.Option(
        [], "--otlp-header", help="NAME=VALUE sent with each OTLP request (an API key); repeatable"
    ),
) -> None:
    """Run the API server and the agent listener, with the controllers in a child process it supervises."""
    from ..server.controllers import CONTROLLER_MODES
    from ..server.runner import parse_listen, serve

    if controllers not in CONTROLLER_MODES:
        raise typer.BadParameter(f"expected one of {', '.join(CONTROLLER_MODES)}", param_hint="'--controllers'")
    if no_controllers:
        controllers = "none"

    for flag, value in (("--listen", listen), ("--agent-listen", agent_listen)):
        try:
            parse_listen(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc).removeprefix(f"--listen {value!r}: "), param_hint=f"'{flag}'") from None
    if telemetry_bus not in ("embedded", "none") and not telemetry_bus.startswith(("nats://", "tls://")):
        raise typer.BadParameter(
            f"{telemetry_bus!r}: expected embedded, none or a nats:// URL", param_hint="'--telemetry-bus'"
        )
    from ..server.otlp import check_endpoint, parse_headers

    headers: dict[str, str] = {}
    if otlp_endpoint is not None:
        if telemetry_bus == "none":
            raise typer.BadParameter("needs a telemetry bus (not --telemetry-bus none)", param_hint="'--otlp-endpoint'")
        try:
            check_endpoint(otlp_endpoint)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--otlp-endpoint'") from None
    try:
        headers = parse_headers(otlp_header)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--otlp-header'") from None
    _log_to_stderr(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            _data_dir(data_dir),
            db,
            listen,
            controllers=controllers,
            agent_listen=agent_listen,
            agent_advertise=agent_advertise,
            telemetry_bus=None if telemetry_bus == "none" else telemetry_bus,
            otlp_endpoint=otlp_endpoint,
            otlp_headers=headers,
        )


def controller_cmd(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="the server's data dir (for the default SQLite database)"
    ),
    db: str | None = typer.Option(None, "--db", envvar="DPUFLEET_DB", help="database URL, the same the server uses"),
    public_url: str | None = typer.Option(
        None,
        "--public-url",
        help="the API server's URL as BMCs reach it (image downloads, event subscriptions) "
        "[default: $DPUFLEET_PUBLIC_URL; without either, no subscriptions and no staging from the repository]",
    ),
    events_from_stdin: bool = typer.Option(
        False,
        "--events-from-stdin",
        hidden=True,
        help="started by 'dpufleet server': read the pushed events it relays on stdin; stop when it closes",
    ),
    metrics_socket: Path | None = typer.Option(
        None, "--metrics-socket", hidden=True, help="answer the controller metrics on this Unix socket"
    ),
) -> None:
    """Run the controllers as their own process against the server's database."""
    from ..plane import run_standalone

    _log_to_stderr(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        run_standalone(
            _data_dir(data_dir),
            db,
            public_url=public_url,
            events_from_stdin=events_from_stdin,
            metrics_socket=metrics_socket,
        )


def demo_cmd(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="keep the demo's state here [default: a temporary dir]"
    ),
    listen: str = typer.Option("127.0.0.1:8740", "--listen", help="HOST:PORT (port 0 picks a free one)"),
    exit_when_ready: bool = typer.Option(
        False, "--exit-when-ready", help="stop once the examples are applied and shown"
    ),
) -> None:
    """Start a complete control plane with example objects, and show how to talk to it."""
    from ..demo import run_demo

    _log_to_stderr(logging.WARNING)
    logging.getLogger("dpufleet.server.auth").setLevel(logging.ERROR)  # the demo prints the token path itself
    run_demo(data_dir, listen, exit_when_ready=exit_when_ready)


def agent_cmd(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="inventory once and exit"),
    print_only: bool = typer.Option(False, "--print", help="print the inventory as YAML instead of sending it"),
    root: Path = typer.Option(Path("/"), "--root", help="the OS root to read (/ on a real DPU or host)"),
    role: str = typer.Option("dpu", "--role", help="dpu (runs on the DPU) or host (reports the host's DPUs)"),
    serial: str | None = typer.Option(None, "--serial", help="override the serial number read from DMI"),
    interval: float = typer.Option(10.0, "--interval", min=1.0, help="heartbeat seconds until the server says"),
    enroll_token: str | None = typer.Option(
        None, "--enroll-token", help="one-time enrollment token ('dpufleet enroll token create')"
    ),
    idevid_cert: Path | None = typer.Option(None, "--idevid-cert", help="this device's IDevID certificate (PEM)"),
    idevid_key: Path | None = typer.Option(None, "--idevid-key", help="this device's IDevID private key (PEM)"),
    ca_file: Path | None = typer.Option(None, "--ca-file", help="the fleet CA certificate to trust"),
    ca_hash: str | None = typer.Option(None, "--ca-hash", help="sha256:<hex> of the fleet CA to pin at first contact"),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="key and certificate (0600) [default: <root>/var/lib/dpufleet/agent]"
    ),
    services: bool = typer.Option(
        False,
        "--services",
        help="a DPU on mTLS: run the services placed on it with runc (state in <state-dir>/services)",
    ),
    trusted_publishers: Path | None = typer.Option(
        None,
        "--trusted-publishers",
        help="--services: a JSON list of {name, class, publicKey}; a signed artifact must verify under it",
    ),
    require_signed_services: bool = typer.Option(
        False, "--require-signed-services", help="--services: never run an unsigned artifact"
    ),
    metrics_listen: str | None = typer.Option(
        None,
        "--metrics-listen",
        help="serve this DPU's telemetry for Prometheus at http://HOST:PORT/metrics (what the control plane asked for)",
    ),
    relay_listen: str | None = typer.Option(
        None,
        "--relay-listen",
        help="--role host: serve the host relay for this host's DPUs at HOST:PORT, on the host<->DPU link "
        "(artifacts they have no route to; their telemetry while cut off)",
    ),
    relay_origin: list[str] = typer.Option(
        [], "--relay-origin", help="--relay-listen: a host the relay may fetch artifacts from [default: --server's]"
    ),
    relay_store_mib: int = typer.Option(
        256, "--relay-store-mib", min=1, help="--relay-listen: the most it keeps for each DPU while cut off (MiB)"
    ),
    host_relay: str | None = typer.Option(
        None,
        "--host-relay",
        help="--role dpu: this DPU's host relay (http://HOST:PORT): artifacts with no route to them, and "
        "telemetry kept on the host while the bus is away",
    ),
) -> None:
    """The dpufleet agent: enrolls (token or IDevID), then inventories this machine and reports it over mTLS.

    --server is then the agent listener (https://HOST:8741). Without any enrollment option and
    without a certificate in the state dir, it reports with a bearer token to the API instead.
    """
    import asyncio

    import yaml

    from ..agent.credentials import EnrollmentOptions
    from ..agent.daemon import Agent, AgentConfig
    from ..agent.inventory import collect_inventory

    if role not in ("dpu", "host"):
        raise UserError(f"--role {role!r}: expected dpu or host")
    if not root.is_dir():
        raise UserError(f"--root {root}: not a directory")
    if (idevid_cert is None) != (idevid_key is None):
        raise UserError("--idevid-cert and --idevid-key go together")
    if print_only:
        inventory = collect_inventory(root)
        print(yaml.safe_dump(inventory.model_dump(mode="json", exclude_none=True), sort_keys=False), end="")
        return
    config = options(ctx).config()
    states = state_dir or root / "var/lib/dpufleet/agent"
    from ..agent.services import ServicesConfig

    if services and role != "dpu":
        raise UserError("--services: only a DPU's agent runs services (--role dpu)")
    check_trust_options(services, trusted_publishers, require_signed_services)
    from ..api.naming import host_port

    listen = None
    if metrics_listen is not None:
        try:
            listen = host_port(metrics_listen)
        except ValueError as exc:
            raise UserError(f"--metrics-listen {exc}") from None
    relay = None
    if relay_listen is not None:
        if role != "host":
            raise UserError("--relay-listen: only a host's agent serves the host relay (--role host)")
        try:
            relay = host_port(relay_listen)
        except ValueError as exc:
            raise UserError(f"--relay-listen {exc}") from None
    elif relay_origin:
        raise UserError("--relay-origin goes with --relay-listen")
    if host_relay is not None:
        from ..agent.host_relay import RelayClient

        if role != "dpu":
            raise UserError("--host-relay: a DPU's agent uses its host's relay (--role dpu)")
        try:
            RelayClient.check_url(host_relay)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if services:
        missing = [tool for tool in ("runc", "umoci") if shutil.which(tool) is None]
        if missing:
            raise UserError(f"--services needs runc and umoci: {', '.join(missing)} not found (apt install runc umoci)")
    mtls = (
        any(v is not None for v in (enroll_token, idevid_cert, ca_file, ca_hash, state_dir))
        or (states / "agent.crt").exists()
    )
    agent_config = AgentConfig(
        config.server,
        None if mtls else config.token,
        root,
        role,
        interval,
        serial=serial,
        state_dir=states if mtls else None,
        enrollment=EnrollmentOptions(enroll_token, idevid_cert, idevid_key, ca_file, ca_hash) if mtls else None,
        services=ServicesConfig(
            states / "services",
            trusted_publishers=trusted_publishers,
            require_signed=require_signed_services,
            host_relay=host_relay,
        )
        if services and mtls
        else None,
        metrics_listen=listen,
        relay_listen=relay,
        relay_origins=tuple(relay_origin),
        relay_store_bytes=relay_store_mib << 20,
        host_relay=host_relay,
    )
    if services and not mtls:
        raise UserError(
            "--services speaks the agent protocol over mTLS: enroll first (--enroll-token or --idevid-cert)"
        )

    async def run() -> None:
        agent = Agent(agent_config)
        try:
            inventory = await agent.collect()
            ident = serial or inventory.serial_number
            if not ident:
                raise UserError(f"cannot tell the serial number from {root}/sys/class/dmi/id; pass --serial")
            if once:
                await agent.secure(ident)
                reply = await agent.send(inventory, ident, inventory.hostname)
                how = " over mTLS" if mtls else ""
                print(f"reported {role} {ident} as {reply.get('object')} to {config.server}{how}")
                return
            _log_to_stderr(logging.INFO)
            await agent.run()
        finally:
            await agent.aclose()

    try:
        asyncio.run(run())
    except (RuntimeError, OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        return


def check_trust_options(services: bool, trusted_publishers: Path | None, require_signed: bool) -> None:
    """`--trusted-publishers FILE` and `--require-signed-services` (agent, sim up): with --services, and a
    trust store that reads, before anything starts."""
    if (trusted_publishers is not None or require_signed) and not services:
        raise UserError("--trusted-publishers and --require-signed-services go with --services")
    if trusted_publishers is not None:
        from ..agent.services import load_trust

        try:
            load_trust(trusted_publishers)
        except ValueError as exc:
            raise UserError(f"--trusted-publishers {exc}") from None
