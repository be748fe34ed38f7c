"""`dpufleet token ...`, `dpufleet audit ...`, `dpufleet whoami` and `dpufleet policy`."""

from __future__ import annotations

import typer
from rich.table import Table

from .common import UserError, note, options, stdout

token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log: list and verify.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="a name for the token (DNS-1123), e.g. alice-laptop"),
    role: list[str] = typer.Option(..., "--role", "-r", help="admin, operator, tenant, viewer, agent, cloud-service"),
    project: str | None = typer.Option(None, "--project", "-p", help="grant the roles in this project only"),
    expires: str | None = typer.Option(None, "--expires", help="lifetime, e.g. 24h, 30d [default: never]"),
    subject: str | None = typer.Option(None, "--subject", help="who holds it [default: the token's name]"),
) -> None:
    """Create a token and print it once: the server keeps only its hash."""
    grants = [f"{r}@{project}" if project else r for r in role]
    with options(ctx).client() as client:
        created = client.create_token(name, grants, expires, subject)
    print(created["token"])
    scope = ", ".join(_grant(g) for g in created.get("grants") or [])
    note(
        f"token {created['name']!r} ({scope}; expires {created.get('expiresAt') or 'never'}): store it now, it is not shown again"
    )


def _grant(grant: dict[str, object]) -> str:
    return f"{grant['role']}@{grant['project']}" if grant.get("project") else str(grant["role"])


@token_app.command("list")
def token_list(ctx: typer.Context) -> None:
    """List tokens (names, grants, expiry, last use), never their secrets."""
    with options(ctx).client() as client:
        items = client.list_tokens()
    table = Table(box=None, pad_edge=False, show_edge=False)
    for header in ("NAME", "SUBJECT", "ROLES", "EXPIRES", "LAST USED", "STATE"):
        table.add_column(header)
    for item in items:
        state = "revoked" if item.get("revoked") else "expired" if item.get("expired") else "active"
        table.add_row(
            str(item["name"]),
            str(item["subject"]),
            ",".join(_grant(g) for g in item.get("grants") or []),
            str(item.get("expiresAt") or "never"),
            str(item.get("lastUsedAt") or "-"),
            state,
        )
    stdout().print(table)


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, name: str = typer.Argument(..., help="the token's name")) -> None:
    """Revoke a token: refused from now on (within seconds on other server processes)."""
    with options(ctx).client() as client:
        client.revoke_token(name)
    print(f"token {name!r} revoked")


@audit_app.command("list")
def audit_list(
    ctx: typer.Context, limit: int = typer.Option(50, "--limit", "-n", min=1, max=10000, help="newest N records")
) -> None:
    """The newest audit records, oldest first."""
    with options(ctx).client() as client:
        items = client.audit_records(limit)
    table = Table(box=None, pad_edge=False, show_edge=False)
    for header in ("SEQ", "TIME", "WHO", "ROLES", "ACTION", "OBJECT", "RESULT", "SOURCE", "DETAIL"):
        table.add_column(header)
    for rec in items:
        obj = "/".join(p for p in (rec.get("project"), rec.get("kind"), rec.get("name")) if p)
        table.add_row(
            str(rec["seq"]),
            str(rec["time"]),
            str(rec["subject"]),
            str(rec["roles"]),
            str(rec["action"]),
            obj,
            f"{rec['result']} ({rec['code']})",
            str(rec.get("source") or ""),
            str(rec.get("detail") or ""),
        )
    stdout().print(table)


@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Walk the hash chain; exit 1 naming the first record that does not hold."""
    with options(ctx).client() as client:
        result = client.audit_verify()
    if not result.get("ok"):
        raise UserError(
            f"audit log broken at record {result.get('brokenSeq')}: {result.get('reason')} "
            f"({result.get('checked')} records before it verified)"
        )
    print(f"audit log verified: {result.get('checked')} records, hash chain intact")


def whoami(ctx: typer.Context) -> None:
    """Who the server thinks you are, and your roles."""
    with options(ctx).client() as client:
        info = client.whoami()
    grants = ", ".join(_grant(g) for g in info.get("grants") or []) or "no roles"
    print(f"{info['subject']} (token {info.get('token') or '-'}, via {info.get('via')}): {grants}")
