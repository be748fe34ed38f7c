"""`dpufleet sim`: the emulated fleet. Its commands are registered here by the emulator's owners."""

from __future__ import annotations

import typer

sim_app = typer.Typer(help="Run an emulated fleet of hosts, BMCs and DPUs.", no_args_is_help=True)
