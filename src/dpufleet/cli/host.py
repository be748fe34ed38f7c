"""`dpufleet host console NAME`: how to reach a host's console, from what its own BMC reports.

The consoles come from the crawl of the host's BMC (Host status.hardware.consoles: the host system's
SerialConsole with a port per protocol, and its manager's serial and graphical consoles); the
address from the BMC object the Host's spec.bmcRef names. Nothing is connected here: the command
prints what an operator types, for each protocol the BMC offers and has enabled.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import typer

from ..client import Client
from .common import UserError, options

host_app = typer.Typer(help="A host server seen through its own BMC.", no_args_is_help=True)
_PROJECT = typer.Option(None, "-p", "--project", help="project of the host")

# the default port of each protocol where the BMC names none
_DEFAULT_PORTS = {"SSH": 22, "IPMI": 623, "Telnet": 23}


def console_lines(host: dict[str, Any], bmc: dict[str, Any] | None, user: str) -> list[str]:
    """The commands that reach the host's console, one per enabled protocol (serial first)."""
    name = host["metadata"]["name"]
    hardware = (host.get("status") or {}).get("hardware") or {}
    consoles = [c for c in hardware.get("consoles") or [] if c.get("enabled") is not False]
    if not consoles:
        why = "its BMC reports no console" if hardware else "its BMC has not been read (spec.bmcRef, status.hardware)"
        raise UserError(f"host/{name}: no console known: {why}")
    address = urlsplit(str(((bmc or {}).get("spec") or {}).get("address") or "")).hostname
    if not address:
        raise UserError(f"host/{name}: its BMC ({(host.get('spec') or {}).get('bmcRef')}) has no spec.address")
    ports: dict[str, int] = {}
    types: list[str] = []
    for console in consoles:  # the system's entry carries the ports; the manager's, the protocols
        for protocol, port in (console.get("ports") or {}).items():
            ports.setdefault(protocol, int(port))
        if console.get("kind") == "serial":
            types.extend(t for t in console.get("connectTypes") or [] if t not in types)
    lines = [f"host/{name}: consoles through its BMC at {address}"]
    for protocol in types:
        port = ports.get(protocol, _DEFAULT_PORTS.get(protocol))
        if protocol == "SSH":
            lines.append(f"  serial over SSH:  ssh -p {port} {user}@{address}")
        elif protocol == "IPMI":
            lines.append(
                f"  serial over IPMI: ipmitool -I lanplus -H {address} -p {port} -U {user} -P ... sol activate"
            )
        elif protocol == "Telnet":
            lines.append(f"  serial over Telnet: telnet {address} {port}")
        else:
            lines.append(f"  serial over {protocol}")
    for console in consoles:
        if console.get("kind") == "graphical":
            lines.append(f"  graphical ({', '.join(console.get('connectTypes') or ['KVM'])}): the BMC's web console")
    return lines


@host_app.command("console")
def console(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the Host"),
    project: str | None = _PROJECT,
    user: str = typer.Option("USER", "--user", help="the BMC account to put in the commands"),
) -> None:
    """Print how to reach a host's console (serial over SSH/IPMI/Telnet, graphical), from its BMC's report."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        host = client.get("host", name, config.project)
        ref = (host.get("spec") or {}).get("bmcRef")
        if not ref:
            raise UserError(f"host/{name}: spec.bmcRef is not set: its console is reached through its BMC")
        bmc = client.get("bmc", ref, config.project)
    for line in console_lines(host, bmc, user):
        print(line)
