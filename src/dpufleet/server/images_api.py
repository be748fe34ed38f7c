"""HTTP routes of the image repository, and the provisioning pieces the API server carries.

    PUT  /images/v1/blobs/sha256/{digest}                 upload (streamed; kept only if the digest matches)
    HEAD /images/v1/blobs/sha256/{digest}                 is it there, how large
    POST /images/v1/blobs/sha256/{digest}/url?filename=   a signed, short-lived download URL
    GET  /images/v1/blobs/sha256/{digest}/{filename}      download, with Range (resumable)

Uploads and URL requests take the API's bearer token. Downloads are made by BMCs and
installers, which have no token: they present the signature of a URL the control plane
signed for that blob (HMAC over digest, file name and expiry; one hour by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import FileResponse, JSONResponse, Response

from ..api.errors import APIError, BadRequest, NotFound, Unauthorized
from ..api.meta import isotime, now
from ..images.guard import protect_images
from ..images.repository import ImageContentError, ImageRepository, check_digest
from ..provisioning.metrics import register_metrics
from ..runtime.status import mutate_status_sync
from .common import ServerState, body_chunks

MAX_UPLOAD = 64 * 1024**3  # 64 GiB: BlueField bundles exceed 1 GiB; the limit stops a runaway stream


class ContentRefused(APIError):
    code = 422
    reason = "ContentRefused"


def _repository(state: ServerState) -> ImageRepository:
    repo = state.services.repository
    if repo is None:
        raise NotFound("this server has no image repository")
    return repo


def _digest(value: str) -> str:
    try:
        return check_digest(value)
    except ImageContentError as exc:
        raise BadRequest(exc.message) from None


def mark_images_available(state: ServerState, digest: str, size: int) -> list[str]:
    """Show on every Image with a component of this digest that its content is in the repository."""
    marked = []
    for image in state.store.list("Image").items:
        components = (image.get("spec") or {}).get("components") or []
        if not any(c.get("sha256") == digest for c in components):
            continue

        def mutate(status: dict[str, Any], components: list[dict[str, Any]] = components) -> None:
            known = {c.get("name"): c for c in status.get("components") or []}
            for comp in components:
                entry = dict(known.get(comp["name"]) or {"name": comp["name"], "sha256": comp["sha256"]})
                if comp["sha256"] == digest:
                    entry.update(sha256=digest, available=True, size=size, verifiedAt=isotime(now()), error=None)
                known[comp["name"]] = entry
            status["components"] = [known[c["name"]] for c in components]
            ready = all(entry.get("available") for entry in status["components"])
            status["phase"] = "Available" if ready else "AwaitingContent"

        meta = image["metadata"]
        mutate_status_sync(state.store, "Image", meta["name"], mutate, meta["project"])
        marked.append(f"{meta['project']}/{meta['name']}")
    return marked


def images_router(state: ServerState, authenticated: Sequence[Depends]) -> APIRouter:
    """The repository's routes; also refuses deleting images in use and exports provisioning metrics."""
    protect_images(state.store)
    register_metrics(state.registry)
    router = APIRouter(prefix="/images/v1", tags=["images"])
    blob = "/blobs/sha256/{digest}"

    @router.put(blob, status_code=201, dependencies=list(authenticated), summary="Upload content (streamed)")
    async def upload(digest: str, request: Request) -> JSONResponse:
        repo = _repository(state)
        digest = _digest(digest)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_UPLOAD:
            raise ContentRefused(f"content of {length} bytes exceeds the limit of {MAX_UPLOAD}")

        try:
            stored = await repo.put(body_chunks(request), digest, max_size=MAX_UPLOAD)
        except ImageContentError as exc:
            raise ContentRefused(exc.message, {"cause": exc.reason}) from None
        images = await asyncio.to_thread(mark_images_available, state, stored.sha256, stored.size)
        return JSONResponse({"sha256": stored.sha256, "size": stored.size, "images": images}, status_code=201)

    @router.head(blob, dependencies=list(authenticated), summary="Whether content is stored")
    async def exists(digest: str) -> Response:
        found = _repository(state).stat(_digest(digest))
        if found is None:
            return Response(status_code=404)
        return Response(status_code=200, headers={"Content-Length": str(found.size)})

    @router.post(blob + "/url", dependencies=list(authenticated), summary="A signed, short-lived download URL")
    async def signed_url(digest: str, filename: str = "image.bin", ttl: float | None = None) -> dict[str, str]:
        repo = _repository(state)
        digest = _digest(digest)
        if repo.stat(digest) is None:
            raise NotFound(f"no content with sha256 {digest}")
        path = repo.signed_path(digest, filename, ttl)
        return {"path": path, "url": (repo.public_url or "").rstrip("/") + path if repo.public_url else path}

    @router.head(blob + "/{filename}", summary="Size of a download (signed URL)")
    async def download_head(digest: str, filename: str, expires: str | None = None, sig: str | None = None) -> Response:
        return await download(digest, filename, expires, sig)

    @router.get(blob + "/{filename}", summary="Download (signed URL), with Range")
    async def download(digest: str, filename: str, expires: str | None = None, sig: str | None = None) -> Response:
        repo = _repository(state)
        digest = _digest(digest)
        if not repo.check_signature(digest, filename, expires, sig):
            raise Unauthorized("this download URL is not signed by this server, or it expired: ask for a new one")
        found = repo.stat(digest)
        if found is None:
            raise NotFound(f"no content with sha256 {digest}")
        return FileResponse(
            found.path,
            media_type="application/octet-stream",
            filename=filename,
            headers={"ETag": f'"sha256:{digest}"', "Cache-Control": "private, max-age=3600"},
        )

    _ = (upload, exists, signed_url, download, download_head)
    return router
