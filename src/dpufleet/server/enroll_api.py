"""Operator endpoints for enrollment, on the API listener (bearer token, admin or operator):

GET  /enroll/v1/info              the agent listener's URL and the fleet CA (what agents pin)
POST /enroll/v1/tokens            a one-time enrollment token bound to one device
GET  /enroll/v1/tokens            the tokens (ids, devices, expiry, use; never the secrets)
POST /enroll/v1/vendor-cas        trust a vendor CA's IDevIDs
GET  /enroll/v1/vendor-cas        the trusted vendor CAs
POST /enroll/v1/revocations       revoke a device (decommission): its certificates stop working at once
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from ..api.errors import Forbidden, Invalid
from ..api.validation import describe_errors
from ..security.enroll import EnrollmentAuthority
from ..security.pki import AgentIdentity, PKIError, Role, cert_pem, fingerprint
from ..security.policy import SUBACTION_RULES, SubAction
from .common import ServerState, read_json, respond

ENROLL_PREFIX = "/enroll/v1"


class TokenCreate(BaseModel):
    serial: str = Field(min_length=1, max_length=128)
    role: Role = "dpu"
    expiresSeconds: int = Field(default=3600, ge=60, le=30 * 86400)


class VendorCA(BaseModel):
    certificate: str = Field(min_length=1, max_length=16 * 1024)


class Revocation(BaseModel):
    serial: str = Field(min_length=1, max_length=128)
    role: Role = "dpu"


def _parse(model: type[Any], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        summary, causes = describe_errors(exc)
        raise Invalid(summary, {"causes": causes}) from None


def _identity(serial: str, role: Role) -> AgentIdentity:
    try:
        return AgentIdentity(role, serial)
    except PKIError as exc:
        raise Invalid(str(exc)) from None


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def enroll_router(state: ServerState, authority: EnrollmentAuthority, agent_url: Callable[[], str]) -> APIRouter:
    def operator(request: Request) -> str:
        who = state.auth.authenticate(request.headers.get("authorization"))
        allowed = SUBACTION_RULES[SubAction.ENROLLMENT_ADMIN]
        if not allowed & who.system_roles:
            raise Forbidden(
                f"{SubAction.ENROLLMENT_ADMIN} needs a system-wide role among "
                f"{', '.join(sorted(r.value for r in allowed))}; you have {who.describe()}"
            )
        return str(getattr(who, "name", "?"))

    router = APIRouter(prefix=ENROLL_PREFIX, tags=["enrollment"])
    ca = authority.ca

    def info() -> dict[str, str]:
        return {
            "agentURL": agent_url(),
            "caFingerprint": ca.fingerprint,
            "caCertificate": cert_pem(ca.certificate).decode(),
        }

    @router.get("/info", summary="Where agents enroll and which CA they pin")
    async def get_info(_who: str = Depends(operator)) -> Response:
        return respond(info())

    @router.post("/tokens", status_code=201, summary="Create a one-time enrollment token for one device")
    async def create_token(request: Request, who: str = Depends(operator)) -> Response:
        body: TokenCreate = _parse(TokenCreate, await read_json(request))
        identity = _identity(body.serial, body.role)
        token = await state.write(authority.tokens.create, identity, dt.timedelta(seconds=body.expiresSeconds), who)
        authority.audit(
            "enroll-token-create",
            str(identity),
            "Success",
            f"token {token.token_id}",
            _source(request),
            subject=who,
            roles="operator",
            code=201,
        )
        return respond(
            {
                "token": token.token,
                "tokenId": token.token_id,
                "identity": identity.uri,
                "expires": token.expires.isoformat(),
                **{k: v for k, v in info().items() if k != "caCertificate"},
            },
            201,
        )

    @router.get("/tokens", summary="List enrollment tokens (never their secrets)")
    async def list_tokens(_who: str = Depends(operator)) -> Response:
        tokens = await state.read(authority.tokens.list)
        return respond({"items": [t.__dict__ for t in tokens]})

    @router.post("/vendor-cas", status_code=201, summary="Trust a vendor CA for IDevID enrollment")
    async def trust_vendor(request: Request, who: str = Depends(operator)) -> Response:
        body: VendorCA = _parse(VendorCA, await read_json(request))
        try:
            cert = await state.write(authority.vendors.add, body.certificate.encode())
        except PKIError as exc:
            raise Invalid(str(exc)) from None
        subject = cert.subject.rfc4514_string()
        authority.audit(
            "enroll-trust-vendor-ca",
            "",
            "Success",
            f"{subject} {fingerprint(cert)}",
            _source(request),
            subject=who,
            roles="operator",
            code=201,
        )
        return respond({"subject": subject, "fingerprint": fingerprint(cert)}, 201)

    @router.get("/vendor-cas", summary="List the trusted vendor CAs")
    async def list_vendors(_who: str = Depends(operator)) -> Response:
        roots = await state.read(authority.vendors.roots)
        return respond(
            {
                "items": [
                    {
                        "subject": c.subject.rfc4514_string(),
                        "fingerprint": fingerprint(c),
                        "notAfter": c.not_valid_after_utc.isoformat(),
                    }
                    for c in roots
                ]
            }
        )

    @router.post("/revocations", status_code=201, summary="Revoke a device's certificates (decommission)")
    async def revoke(request: Request, who: str = Depends(operator)) -> Response:
        body: Revocation = _parse(Revocation, await read_json(request))
        identity = _identity(body.serial, body.role)
        when = await state.write(authority.revoke, identity, who, _source(request))
        return respond({"identity": identity.uri, "revokedAt": when.isoformat()}, 201)

    _ = (get_info, create_token, list_tokens, trust_vendor, list_vendors, revoke, cert_pem)
    return router
