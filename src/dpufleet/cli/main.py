"""The `dpufleet` command.

Every failure a user can cause or meet — a bad flag, an unknown kind, a server
refusal, an unreachable server, bad YAML, a missing file — is printed as one line
`error: ...` on stderr with exit status 1 (2 for usage errors), never a traceback.
`DpufleetGroup.main` is where that happens, so the console script stays
`dpufleet.cli.main:app` and typer's CliRunner sees the same behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..client import Client, ClientError, write_config_file
from . import apply as apply_cmd
from . import resources
from . import security as security_cmd
from .bench import bench_app
from .common import GlobalOptions, UserError, error_line, note, options
from .diff import diff
from .dpu import dpu_app
from .edit import edit
from .enroll import enroll_app
from .explain import explain
from .health import debug_bundle, health_app
from .labels import annotate, label
from .reset import reset_app
from .rollout import rollout_app
from .signing import image_app, publisher_app
from .sim import sim_app
from .update import update_app

try:  # typer >= 0.20 carries its own copy of click; its exceptions are not click's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors  # type: ignore[no-redef]

EXIT_ERROR = 1
EXIT_USAGE = 2


class DpufleetGroup(TyperGroup):
    """Runs the command and turns every expected failure into one `error:` line."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as exc:
            print(exc.format_message())
            if standalone_mode:
                sys.exit(0)
            return 0
        except click_errors.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            return self._fail(exc.format_message() + hint, EXIT_USAGE, standalone_mode)
        except click_errors.ClickException as exc:
            return self._fail(exc.format_message(), exc.exit_code, standalone_mode)
        except typer.Abort:
            return self._fail("aborted", EXIT_ERROR, standalone_mode)
        except ClientError as exc:
            return self._fail(exc.message, EXIT_ERROR, standalone_mode)
        except UserError as exc:
            return self._fail(str(exc), exc.exit_code, standalone_mode)
        except KeyboardInterrupt:
            return self._fail("interrupted", 130, standalone_mode)
        code = result if isinstance(result, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    @staticmethod
    def _fail(message: str, code: int, standalone_mode: bool) -> int:
        error_line(message)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="dpufleet",
    cls=DpufleetGroup,
    help="dpufleet: an open, vendor-neutral control plane for DPU/IPU fleets.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    server: str | None = typer.Option(
        None,
        "--server",
        "-s",
        help="API server URL [default: $DPUFLEET_SERVER, the login config, http://127.0.0.1:8740]",
    ),
    token: str | None = typer.Option(
        None, "--token", help="bearer token [default: $DPUFLEET_TOKEN or the login config]"
    ),
) -> None:
    ctx.obj = GlobalOptions(server=server, token=token)


app.command("apply")(apply_cmd.apply)
app.command("get")(resources.get)
app.command("describe")(resources.describe)
app.command("delete")(resources.delete)
app.command("watch")(resources.watch)
for _command in (explain, edit, label, annotate, diff):
    app.command()(_command)
app.add_typer(sim_app, name="sim")
app.add_typer(security_cmd.token_app, name="token")
app.add_typer(security_cmd.audit_app, name="audit")
app.command("whoami")(security_cmd.whoami)
app.command("policy")(security_cmd.policy)
app.add_typer(bench_app, name="bench")
app.add_typer(dpu_app, name="dpu")
app.add_typer(update_app, name="update")
app.add_typer(rollout_app, name="rollout")
app.add_typer(enroll_app, name="enroll")
app.add_typer(image_app, name="image")
app.add_typer(publisher_app, name="publisher")
app.add_typer(health_app, name="health")
app.add_typer(reset_app, name="reset")
app.command("debug-bundle")(debug_bundle)


def _log_to_stderr(level: int) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def _data_dir(value: Path | None) -> Path:
    from ..server.runner import default_data_dir

    return value or default_data_dir()


@app.command("server")
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
    no_controllers: bool = typer.Option(
        False, "--no-controllers", help="serve the API only; run 'dpufleet controller' separately"
    ),
    agent_listen: str = typer.Option(
        "127.0.0.1:8741", "--agent-listen", help="HOST:PORT of the agent listener (mTLS, fleet certificates)"
    ),
    agent_advertise: str | None = typer.Option(
        None, "--agent-advertise", help="host name agents use to reach the agent listener (in its certificate)"
    ),
) -> None:
    """Run the API server (with the controllers in-process unless --no-controllers) and the agent listener."""
    from ..server.runner import parse_listen, serve

    for flag, value in (("--listen", listen), ("--agent-listen", agent_listen)):
        try:
            parse_listen(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc).removeprefix(f"--listen {value!r}: "), param_hint=f"'{flag}'") from None
    _log_to_stderr(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            _data_dir(data_dir),
            db,
            listen,
            controllers=not no_controllers,
            agent_listen=agent_listen,
            agent_advertise=agent_advertise,
        )


@app.command("controller")
def controller_cmd(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="the server's data dir (for the default SQLite database)"
    ),
    db: str | None = typer.Option(None, "--db", help="database URL, the same the server uses"),
) -> None:
    """Run the controllers as their own process against the server's database."""
    from ..controllers.manager import run_standalone

    _log_to_stderr(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        run_standalone(_data_dir(data_dir), db)


@app.command("demo")
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


@app.command("agent")
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


@app.command("login")
def login_cmd(
    ctx: typer.Context,
    server: str | None = typer.Option(
        None, "--server", help="API server URL [default: the global --server, $DPUFLEET_SERVER, ...]"
    ),
    token: str | None = typer.Option(
        None, "--token", help="bearer token (visible in shell history: prefer --token-file)"
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="read the token from this file, e.g. <data-dir>/admin.token"
    ),
    project: str | None = typer.Option(None, "-p", "--project", help="default project for later commands"),
) -> None:
    """Check a token against the server, then save server and token to the config file (mode 0600)."""
    from ..client import config_path, resolve_config

    if token and token_file:
        raise typer.BadParameter("use either --token or --token-file", param_hint="'--token'")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UserError(f"{token_file}: cannot read the token: {exc.strerror or exc}") from None
    opts = options(ctx)
    token = token or opts.token
    url = resolve_config(server or opts.server, token).server
    if not token:
        if not sys.stdin.isatty():
            raise UserError("no token: pass --token-file FILE (for example <data-dir>/admin.token) or --token")
        token = typer.prompt("Token", hide_input=True).strip()
    if not token:
        raise UserError("the token is empty")
    with Client(url, token) as client:
        version = client.version()
    path = write_config_file(url, token, project, config_path())
    print(f"logged in to {url} (server {version.get('version', '?')}); saved to {path}")


@app.command("version")
def version_cmd(ctx: typer.Context) -> None:
    """Print the client version and, if it can be reached, the server's."""
    print(f"client: dpufleet {__version__}")
    config = options(ctx).config()
    try:
        with Client.from_config(config, timeout=5.0) as client:
            info = client.version()
        print(f"server: dpufleet {info.get('version', '?')} ({info.get('apiVersion', '?')}) at {config.server}")
    except ClientError as exc:
        note(f"server: not available at {config.server}: {exc.message}")


if __name__ == "__main__":
    app()
