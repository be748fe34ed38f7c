"""Zero-touch bootstrap endpoints on the API listener (no bearer token: the device has none yet).

    GET  /bootstrap/v1/trust-anchor   the onboarding key's id and public key (the operator puts the
                                      id in the DHCP option next to the bootstrap URL)
    POST /bootstrap/v1/onboarding     {"request": {serial, purpose: onboarding, at, partNumber}, "idevid": proof}
                                      -> signed onboarding information (security/onboarding.py)
    POST /bootstrap/v1/progress       {"request": {serial, purpose: progress, at, stage, reason, message, version},
                                      "idevid": proof} -> recorded on the DPU (status.bootstrap, the
                                      Bootstrapped condition, an Event)

Every request is signed with the device's IDevID key (a trusted vendor's certificate naming the
serial, `EnrollmentAuthority.verify_idevid`) and at most 5 minutes old. Only expected machines are
answered: the serial must be in a Discovery's `expectedSerials` (the expected-machines allow-list,
else 403) and the operator must have created its DPU object naming an image (else 404). Nothing
else is ever returned: no image, no token. Each onboarding document carries a fresh one-time
enrollment token bound to the serial (the existing enrollment tokens); each issue is audited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from ..api.errors import APIError, Forbidden, Invalid, NotFound
from ..api.kinds import ComponentType, ImageSpec
from ..api.meta import isotime, now
from ..api.validation import describe_errors
from ..controllers.naming import dpu_name
from ..controllers.runtime.conditions import ConditionStatus, Severity, set_condition, summarize_ready
from ..controllers.runtime.events import EventRecorder
from ..controllers.runtime.status import mutate_status_sync
from ..images.repository import ImageContentError, repository_for
from ..inventory.catalog import find_profile
from ..security.enroll import EnrollmentAuthority, EnrollmentRefused, IDevIDProof
from ..security.onboarding import (
    DOCUMENT_LIFETIME,
    REQUEST_MAX_AGE,
    DeviceRequest,
    OnboardingEnrollment,
    OnboardingImage,
    OnboardingInfo,
    OnboardingKey,
    public_b64,
)
from ..security.pki import AgentIdentity, PKIError
from .common import ServerState
from .common import read_json as _read_json
from .common import respond as _doc

log = logging.getLogger(__name__)
BOOTSTRAP_PREFIX = "/bootstrap/v1"
CONDITION = "Bootstrapped"
URL_TTL = 3600.0
TOKEN_LIFETIME = dt.timedelta(hours=1)
FAILED_STAGES = {"Refused", "Failed"}


class SignedDeviceRequest(BaseModel):
    request: DeviceRequest
    idevid: IDevIDProof
    partNumber: str | None = Field(default=None, max_length=64)


class Unavailable(APIError):
    code = 503
    reason = "ServiceUnavailable"


def bootstrap_router(
    state: ServerState, authority: EnrollmentAuthority, key: OnboardingKey, agent_url: Any
) -> APIRouter:
    """`agent_url`: a callable giving the agent listener's URL (known once it is bound)."""
    router = APIRouter(prefix=BOOTSTRAP_PREFIX, tags=["bootstrap"])
    store = state.store
    events = EventRecorder(store, "bootstrap")
    ca_sha256 = "sha256:" + hashlib.sha256(authority.ca.certificate.public_bytes(Encoding.DER)).hexdigest()

    def source(request: Request) -> str:
        return request.client.host if request.client else ""

    async def verified(request: Request, purpose: str) -> tuple[SignedDeviceRequest, AgentIdentity]:
        try:
            body = SignedDeviceRequest.model_validate(await _read_json(request))
        except ValidationError as exc:
            summary, causes = describe_errors(exc)
            raise Invalid(f"bootstrap request is invalid: {summary}", {"causes": causes}) from None
        req = body.request
        try:
            identity = AgentIdentity("dpu", req.serial)
        except PKIError as exc:
            raise Invalid(str(exc)) from None
        at = req.at if req.at.tzinfo else req.at.replace(tzinfo=dt.UTC)
        if req.purpose != purpose or abs(now() - at) > REQUEST_MAX_AGE:
            raise Forbidden(f"the signed request is not a current {purpose} request")
        try:
            await asyncio.to_thread(authority.verify_idevid, identity, body.idevid, req.canonical())
        except EnrollmentRefused as exc:
            authority.audit(
                f"bootstrap-{purpose}", str(identity), str(exc.code), exc.message, source(request), code=403
            )
            raise Forbidden(f"device proof refused: {exc.message}", {"reasonCode": str(exc.code)}) from None
        if req.serial not in await asyncio.to_thread(expected_serials):
            authority.audit(
                f"bootstrap-{purpose}",
                str(identity),
                "NotExpected",
                "not in any expectedSerials",
                source(request),
                code=403,
            )
            raise Forbidden(
                f"serial {req.serial} is not an expected machine (no Discovery lists it in expectedSerials)"
            )
        return body, identity

    def expected_serials() -> set[str]:
        found: set[str] = set()
        for disc in store.list("Discovery").items:
            found.update((disc.get("spec") or {}).get("expectedSerials") or [])
        return found

    def record(dpu: dict[str, Any], stage: str, reason: str, message: str, version: str | None = None) -> None:
        failed = stage in FAILED_STAGES

        def mutate(status: dict[str, Any]) -> None:
            entry = {"stage": stage, "reason": reason, "message": message, "at": isotime(now())}
            if version:
                entry["version"] = version
            previous = status.get("bootstrap") or {}
            if stage == "OnboardingIssued" and previous.get("stage") in FAILED_STAGES:
                # the device asks again after a refusal: the refusal stays shown until it gets further
                status["bootstrap"] = {**previous, "lastIssued": entry["at"]}
                return
            status["bootstrap"] = entry
            if stage == "Complete":
                set_condition(status, CONDITION, True, "Complete", message)
                spec = dpu.get("spec") or {}
                status["installedImage"] = spec.get("image")
                status["appliedFlavor"] = spec.get("flavor")
                status["phase"] = "Ready"
            elif failed:
                set_condition(status, CONDITION, False, reason, message, severity=Severity.ERROR)
            else:
                set_condition(
                    status, CONDITION, ConditionStatus.UNKNOWN, reason or stage, message, severity=Severity.INFO
                )
            summarize_ready(status, [CONDITION])  # Ready carries how the bootstrap went

        current = mutate_status_sync(store, "DPU", dpu["metadata"]["name"], mutate, dpu["metadata"]["project"])
        events.record(current, reason or stage, message, "Warning" if failed else "Normal")

    def expected_dpu(serial: str) -> dict[str, Any]:
        name = dpu_name(serial)
        try:
            dpu = store.get("DPU", name, "default")
        except NotFound:
            raise NotFound(
                f"no onboarding information for serial {serial}: create dpu/{name} with spec.image"
            ) from None
        if not (dpu.get("spec") or {}).get("image"):
            raise NotFound(f"no onboarding information for serial {serial}: dpu/{name} names no spec.image")
        return dpu

    def onboarding(body: SignedDeviceRequest, identity: AgentIdentity, progress_url: str, who: str) -> dict[str, Any]:
        dpu = expected_dpu(identity.serial)
        spec = dpu["spec"]
        try:
            image = ImageSpec.model_validate(store.get("Image", spec["image"], "default")["spec"])
        except NotFound:
            raise NotFound(f"no onboarding information: image {spec['image']!r} does not exist") from None
        os_component = next((c for c in image.components if c.type == ComponentType.OS), None)
        profile = find_profile(part_number=body.partNumber) if body.partNumber else None
        os_fw = profile.firmware_of_kind("os") if profile else None
        if os_component is None or os_fw is None:
            raise NotFound(
                f"no onboarding information: image {spec['image']!r} has no OS for part number {body.partNumber!r}"
            )
        repository = repository_for(store)
        if repository is None or repository.stat(os_component.sha256) is None:
            raise Unavailable(f"the content of image {spec['image']!r} is not in the repository")
        file_name = f"{os_fw.id}-{os_component.version}.bin"
        try:
            url = repository.signed_url(os_component.sha256, file_name, URL_TTL)
        except ImageContentError as exc:
            raise Unavailable(exc.message) from None
        token = authority.tokens.create(identity, TOKEN_LIFETIME, "bootstrap")
        issued = now()
        info = OnboardingInfo(
            serial=identity.serial,
            dpu=dpu["metadata"]["name"],
            image=OnboardingImage(
                name=spec["image"],
                version=os_component.version,
                target=os_fw.id,
                sha256=os_component.sha256,
                fileName=file_name,
                url=url,
            ),
            flavor=spec.get("flavor"),
            enrollment=OnboardingEnrollment(token=token.token, agentURL=agent_url(), caSha256=ca_sha256),
            progressURL=progress_url,
            issued=issued,
            expires=issued + DOCUMENT_LIFETIME,
        )
        authority.audit(
            "bootstrap-onboarding",
            str(identity),
            "Success",
            f"image {spec['image']} {os_component.version}; enrollment token {token.token_id}",
            who,
        )
        record(dpu, "OnboardingIssued", "OnboardingIssued", f"onboarding information issued: image {spec['image']}")
        return key.sign(info).model_dump(mode="json")

    @router.get("/trust-anchor", summary="The onboarding key devices pin (its id goes in the DHCP option)")
    async def trust_anchor() -> Response:
        return _doc({"keyid": key.keyid, "publicKey": public_b64(key.public)})

    @router.post("/onboarding", summary="Signed onboarding information for an expected device")
    async def get_onboarding(request: Request) -> Response:
        body, identity = await verified(request, "onboarding")
        progress_url = str(request.url).rsplit("/", 1)[0] + "/progress"
        repository = repository_for(store)
        if repository is not None and repository.public_url:
            progress_url = repository.public_url.rstrip("/") + BOOTSTRAP_PREFIX + "/progress"
        doc = await state.write(onboarding, body, identity, progress_url, source(request))
        return _doc(doc)

    @router.post("/progress", summary="A bootstrapping device reports what it did (or refused)")
    async def progress(request: Request) -> Response:
        body, identity = await verified(request, "progress")
        req = body.request
        stage = req.stage or "Progress"
        reason = req.reason or stage
        dpu = await asyncio.to_thread(expected_dpu, identity.serial)
        message = req.message or stage
        if stage == "Complete" and req.version:
            image = store.get("Image", dpu["spec"]["image"], "default")
            wanted = (image.get("spec") or {}).get("version")
            os_versions = [
                c.get("version") for c in (image.get("spec") or {}).get("components") or [] if c.get("type") == "os"
            ]
            if req.version not in os_versions:
                stage, reason = "Failed", "VersionMismatch"
                message = f"the DPU runs {req.version}, not image {dpu['spec']['image']} {wanted}"
        await state.write(record, dpu, stage, reason, message, req.version)
        return _doc({"recorded": stage})

    _ = (trust_anchor, get_onboarding, progress)
    return router
