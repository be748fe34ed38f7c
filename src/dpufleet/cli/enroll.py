"""`dpufleet enroll`: admit devices to the fleet (tokens, vendor CAs) and decommission them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from ..client import Client
from .common import UserError, options

enroll_app = typer.Typer(
    help="Admit agents to the fleet (zero-trust enrollment) and revoke them.", no_args_is_help=True
)
token_app = typer.Typer(help="One-time enrollment tokens, each bound to one device.", no_args_is_help=True)
enroll_app.add_typer(token_app, name="token")

DURATION = re.compile(r"^(\d+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    match = DURATION.match(text.strip())
    if not match:
        raise UserError(f"--expires {text!r}: expected a number and a unit, e.g. 30m, 1h, 7d")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def _call(client: Client, method: str, path: str, body: Any = None) -> Any:
    return client._request(method, path, body=body)


def _role(role: str) -> str:
    if role not in ("dpu", "host"):
        raise UserError(f"--role {role!r}: expected dpu or host")
    return role


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    serial: str = typer.Option(..., "--serial", help="the serial number of the device this token admits"),
    role: str = typer.Option("dpu", "--role", help="dpu (agent on the DPU) or host (agent on the host)"),
    expires: str = typer.Option("1h", "--expires", help="lifetime: 30m, 1h, 7d (at most 30d)"),
    project: str | None = typer.Option(
        None, "-p", "--project", help="the project the device belongs to (default: the configured project)"
    ),
) -> None:
    """Create a one-time enrollment token for one device and print the agent command that uses it."""
    config = options(ctx).config(project)
    body = {
        "serial": serial,
        "role": _role(role),
        "expiresSeconds": parse_duration(expires),
        "project": config.project,
    }
    with Client.from_config(config) as client:
        reply = _call(client, "POST", "/enroll/v1/tokens", body)
    print(f"token:      {reply['token']}")
    print(f"device:     {reply['identity']}")
    print(f"project:    {reply.get('project') or config.project}")
    print(f"expires:    {reply['expires']} (single use)")
    print(f"agent URL:  {reply['agentURL']}")
    print(f"fleet CA:   {reply['caFingerprint']}")
    print("")
    print("On the device:")
    print(
        f"  dpufleet --server {reply['agentURL']} agent --role {role} --ca-hash {reply['caFingerprint']} "
        f"--enroll-token {reply['token']}"
    )


@token_app.command("list")
def token_list(ctx: typer.Context) -> None:
    """List enrollment tokens: ids, devices, expiry, and when each was used (never the secrets)."""
    with options(ctx).client() as client:
        items = _call(client, "GET", "/enroll/v1/tokens")["items"]
    rows = [("ID", "DEVICE", "PROJECT", "EXPIRES", "USED", "CREATED BY")]
    rows += [
        (
            t["token_id"],
            t["identity"],
            t.get("project") or "-",
            t["expires"][:19],
            (t["used"] or "-")[:19],
            t["created_by"],
        )
        for t in items
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@enroll_app.command("trust-vendor-ca")
def trust_vendor_ca(
    ctx: typer.Context, file: Path = typer.Argument(..., help="the vendor's device identity CA certificate (PEM)")
) -> None:
    """Trust a manufacturer's CA: devices with an IDevID it signed may enroll without a token."""
    try:
        pem = file.read_text()
    except OSError as exc:
        raise UserError(f"{file}: cannot read it: {exc.strerror or exc}") from None
    with options(ctx).client() as client:
        reply = _call(client, "POST", "/enroll/v1/vendor-cas", {"certificate": pem})
    print(f"trusted vendor CA {reply['subject']} ({reply['fingerprint']})")


@enroll_app.command("vendor-cas")
def vendor_cas(ctx: typer.Context) -> None:
    """List the vendor CAs whose IDevIDs are trusted."""
    with options(ctx).client() as client:
        for item in _call(client, "GET", "/enroll/v1/vendor-cas")["items"]:
            print(f"{item['fingerprint'][:23]}...  {item['subject']}  (until {item['notAfter'][:10]})")


@enroll_app.command("revoke")
def revoke(
    ctx: typer.Context,
    serial: str = typer.Argument(..., help="the serial number of the device to decommission"),
    role: str = typer.Option("dpu", "--role", help="dpu or host"),
) -> None:
    """Revoke a device (decommission): its certificates are refused at once; IDevID re-enrollment too."""
    with options(ctx).client() as client:
        reply = _call(client, "POST", "/enroll/v1/revocations", {"serial": serial, "role": _role(role)})
    print(f"revoked {reply['identity']} at {reply['revokedAt']}; only a new enrollment token re-admits it")


@enroll_app.command("info")
def info(ctx: typer.Context) -> None:
    """Where agents enroll, and the fleet CA fingerprint they pin."""
    with options(ctx).client() as client:
        reply = _call(client, "GET", "/enroll/v1/info")
    print(f"agent URL:  {reply['agentURL']}")
    print(f"fleet CA:   {reply['caFingerprint']}")
