"""The `dpufleet` command.

Every failure a user can cause or meet — a bad flag, an unknown kind, a server
refusal, an unreachable server, bad YAML, a missing file — is printed as one line
`error: ...` on stderr with exit status 1 (2 for usage errors), never a traceback.
`DpufleetGroup.main` is where that happens, so typer's CliRunner sees the same
behaviour as the console script.

These are the commands that talk to a server over HTTP (client.py) and nothing else: the
commands that run a process of the control plane, the emulator, a benchmark or read the
policy table locally are added by `dpufleet.main`, the console script.
"""

from __future__ import annotations

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
from .common import GlobalOptions, UserError, error_line, note, options
from .deployment import deployment_app
from .diff import diff
from .dpu import dpu_app
from .edit import edit
from .enroll import enroll_app
from .explain import explain
from .health import debug_bundle, health_app
from .host import host_app
from .labels import annotate, label
from .reset import reset_app
from .rollout import rollout_app
from .service import service_app
from .signing import image_app, publisher_app
from .telemetry import telemetry_app
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
app.add_typer(security_cmd.token_app, name="token")
app.add_typer(security_cmd.audit_app, name="audit")
app.command("whoami")(security_cmd.whoami)
app.add_typer(dpu_app, name="dpu")
app.add_typer(service_app, name="service")
app.add_typer(deployment_app, name="deployment")
app.add_typer(host_app, name="host")
app.add_typer(update_app, name="update")
app.add_typer(rollout_app, name="rollout")
app.add_typer(enroll_app, name="enroll")
app.add_typer(image_app, name="image")
app.add_typer(publisher_app, name="publisher")
app.add_typer(health_app, name="health")
app.add_typer(reset_app, name="reset")
app.add_typer(telemetry_app, name="telemetry")
app.command("debug-bundle")(debug_bundle)


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
