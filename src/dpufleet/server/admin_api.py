"""Routes for people and audit: whoami, tokens, the audit log.

    GET    /auth/v1/whoami            the caller's identity and grants (any valid token)
    POST   /auth/v1/tokens            create a token; the reply holds its plaintext, once (token-admin, role-admin)
    GET    /auth/v1/tokens            list tokens (token-admin)
    DELETE /auth/v1/tokens/{name}     revoke a token (token-admin)
    GET    /audit/v1/records          newest records, ?limit=N (audit-read)
    GET    /audit/v1/verify           walk the hash chain (audit-read)

A project admin (admin@P) administers tokens whose grants all lie in projects it administers.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ..api.errors import APIError, BadRequest, Invalid
from ..api.meta import check_name
from ..security.identity import Grant, GrantError, Identity
from ..security.policy import SUBACTION_RULES, SubAction
from ..security.tokens import TokenRecord
from .access import Access
from .common import read_json, respond

DURATION = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EXPIRY = timedelta(days=3660)
MAX_SEQ = 2**63 - 1  # the database's integer range


def parse_duration(value: str) -> timedelta:
    match = DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise Invalid(f"expires {value!r}: use a positive count with s, m, h, d or w, e.g. 24h or 30d")
    delta = timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])
    if delta > MAX_EXPIRY:
        raise Invalid(f"expires {value!r}: at most {MAX_EXPIRY.days} days")
    return delta


def _manages(identity: Identity, grants: tuple[Grant, ...], action: SubAction) -> bool:
    """Whether the caller may administer tokens with these grants: system-wide, or in every grant's project."""
    allowed = SUBACTION_RULES[action]
    if identity.system_roles & allowed:
        return True
    if not grants:
        return False
    return all(g.project is not None and identity.roles_on(g.project) & allowed for g in grants)


def admin_router(state: Any, dependencies: list[Any]) -> APIRouter:
    router = APIRouter(dependencies=dependencies, tags=["auth"])

    def access(request: Request) -> Access:
        result: Access = request.state.access
        return result

    @router.get("/auth/v1/whoami", summary="The caller's identity and grants")
    async def whoami(request: Request) -> Response:
        who = access(request).identity
        return respond(
            {
                "subject": who.name,
                "token": who.token,
                "via": who.via,
                "grants": [g.as_dict() for g in who.grants],
                "expiresAt": who.expires_at.isoformat() if who.expires_at else None,
            }
        )

    @router.post("/auth/v1/tokens", status_code=201, summary="Create an API token (its plaintext is returned once)")
    async def create_token(request: Request) -> Response:
        acc = access(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be an object with name and grants")
        name = str(body.get("name") or "")
        try:
            check_name(name)
            grants = tuple(Grant.parse(g) for g in body.get("grants") or [])
        except (ValueError, GrantError) as exc:
            raise Invalid(f"token: {exc}") from None
        if not grants:
            raise Invalid("grants: a token needs at least one role")
        if not _manages(acc.identity, grants, SubAction.ROLE_ADMIN):
            where = ", ".join(str(g) for g in grants)
            raise acc.forbidden(SubAction.ROLE_ADMIN.value, acc.identity.roles_on(None), f"granting {where}")
        expires = parse_duration(str(body["expires"])) if body.get("expires") else None
        subject = str(body.get("subject") or name)
        try:
            token, record = await state.write(
                lambda: state.auth.tokens.create(
                    name, grants, subject=subject, expires_in=expires, created_by=acc.identity.name
                )
            )
        except APIError as exc:
            await state.write(acc.audit.record, _failure(acc, "token-create", name, exc))
            raise
        await state.write(lambda: acc.record("token-create", "Token", name, "", detail=",".join(map(str, grants))))
        return respond({"token": token, **record.as_dict()}, 201)

    @router.get("/auth/v1/tokens", summary="List API tokens (never their secrets)")
    async def list_tokens(request: Request) -> Response:
        acc = access(request)
        records: list[TokenRecord] = await state.read(state.auth.tokens.list)
        allowed = SUBACTION_RULES[SubAction.TOKEN_ADMIN]
        if not acc.identity.system_roles & allowed:
            if not any(g.project is not None and g.role in allowed for g in acc.identity.grants):
                acc.require(SubAction.TOKEN_ADMIN)  # administers no project's tokens either: 403
            records = [r for r in records if _manages(acc.identity, r.grants, SubAction.TOKEN_ADMIN)]
        return respond({"items": [r.as_dict() for r in records]})

    @router.delete("/auth/v1/tokens/{name}", summary="Revoke an API token")
    async def revoke_token(name: str, request: Request) -> Response:
        acc = access(request)
        try:
            record: TokenRecord = await state.read(state.auth.tokens.get, name)
            if not _manages(acc.identity, record.grants, SubAction.TOKEN_ADMIN):
                acc.require(SubAction.TOKEN_ADMIN)
            record = await state.write(state.auth.tokens.revoke, name)
        except APIError as exc:
            await state.write(acc.audit.record, _failure(acc, "token-revoke", name, exc))
            raise
        state.auth.forget(name)
        await state.write(acc.record, "token-revoke", "Token", name, "")
        return respond(record.as_dict())

    @router.get("/audit/v1/records", summary="The newest audit records, oldest first")
    async def audit_records(
        request: Request,
        limit: int = 100,
        after: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="records after this seq")] = None,
    ) -> Response:
        acc = access(request)
        acc.require(SubAction.AUDIT_READ)
        limit = max(1, min(limit, 10_000))
        records = await state.read(acc.audit.list, limit, after)
        return respond({"items": [r.as_dict() for r in records]})

    @router.get("/audit/v1/verify", summary="Verify the audit log's hash chain")
    async def audit_verify(request: Request) -> Response:
        acc = access(request)
        acc.require(SubAction.AUDIT_READ)
        result = await state.read(acc.audit.verify)
        return respond(result.as_dict())

    _ = (whoami, create_token, list_tokens, revoke_token, audit_records, audit_verify)
    return router


def _failure(acc: Access, action: str, name: str, exc: APIError) -> Any:
    from ..security.audit import AuditEntry

    return AuditEntry(
        subject=acc.identity.name,
        roles=acc.identity.describe(),
        action=action,
        kind="Token",
        name=name,
        result=exc.reason,
        code=exc.code,
        source=acc.source,
    )
