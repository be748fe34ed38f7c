"""What every command shares: the global options, the client, the consoles and the one-line errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import typer
from rich.console import Console

from ..client import Client, ClientConfig, resolve_config


class UserError(Exception):
    """A mistake the user can fix (missing file, bad YAML, bad flag value): printed as one line, exit 1.

    `exit_code` is for the commands whose statuses say something else (diff: 1 means "differs").
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class GlobalOptions:
    server: str | None = None
    token: str | None = None

    def config(self, project: str | None = None) -> ClientConfig:
        return resolve_config(self.server, self.token, project)

    def client(self) -> Client:
        return Client.from_config(self.config())


def options(ctx: typer.Context) -> GlobalOptions:
    root = ctx.find_root()
    if not isinstance(root.obj, GlobalOptions):
        root.obj = GlobalOptions()
    return root.obj


def stdout() -> Console:
    """Tables for people: as wide as the terminal, or unbounded when piped so nothing is cut."""
    width = None if sys.stdout.isatty() else 100_000
    return Console(file=sys.stdout, width=width, highlight=False, markup=False, emoji=False, soft_wrap=False)


def note(message: str) -> None:
    """A remark for the user that is not the command's output (stderr, so pipes stay clean)."""
    print(message, file=sys.stderr, flush=True)


def error_line(message: str) -> None:
    first = " ".join(str(message).split("\n")[0].split()) if message else "unknown error"
    print(f"error: {first}", file=sys.stderr, flush=True)
