"""A small typed HTTP client for the dpufleet API, used by the CLI, the demo and tests.

Errors from the server's `Status` body become `ClientError(code, reason, message)`;
a server that cannot be reached becomes a `ClientError` with reason `Unreachable`
and a message that names the URL, so callers print one line and never a traceback.

Where the client finds its server and token (first match wins, per field):
flags (the arguments of `resolve_config`), then the environment (DPUFLEET_SERVER,
DPUFLEET_TOKEN, DPUFLEET_PROJECT), then the file `dpufleet login` writes
(`$XDG_CONFIG_HOME/dpufleet/config.yaml`, mode 0600). A token from the file is only
sent to the server it was written for.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import yaml

from . import API_VERSION
from .api.kinds import REGISTRY, Column, KindInfo, UnknownKind, lookup
from .api.meta import DEFAULT_PROJECT

DEFAULT_SERVER = "http://127.0.0.1:8740"
BASE = "/apis/dpufleet.io/v1alpha1"
ENV_SERVER = "DPUFLEET_SERVER"
ENV_TOKEN = "DPUFLEET_TOKEN"
ENV_PROJECT = "DPUFLEET_PROJECT"
WATCH_READ_TIMEOUT = 35.0  # the server sends a BOOKMARK at least every 10 s; silence this long means a dead stream


class ClientError(Exception):
    """An error to show the user as one line: a server Status, or a transport failure."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}


class Unreachable(ClientError):
    """The server did not answer at all (refused, DNS, timeout, connection reset)."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(0, "Unreachable", f"cannot reach the dpufleet server at {url}: {why}")
        self.url = url


# --- configuration ----------------------------------------------------------------------------------------


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dpufleet" / "config.yaml"


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ClientError(0, "BadConfig", f"server URL {url!r} must start with http:// or https://")
    return url


@dataclass(frozen=True)
class ClientConfig:
    server: str
    token: str | None
    project: str
    server_from: str  # "flag", "env", "config" or "default": shown by `dpufleet version`


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(0, "BadConfig", f"cannot read {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientError(0, "BadConfig", f"{path}: expected a mapping with server and token")
    return data


def write_config_file(server: str, token: str, project: str | None = None, path: Path | None = None) -> Path:
    """Write the login config with mode 0600 (its directory 0700); the token is a secret."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body: dict[str, str] = {"server": _normalise_url(server), "token": token}
    if project:
        body["project"] = project
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(body, fh, sort_keys=False)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def resolve_config(server: str | None = None, token: str | None = None, project: str | None = None) -> ClientConfig:
    """Flags, then environment, then the login file, then defaults (see the module docstring)."""
    file = read_config_file()
    file_server = _normalise_url(str(file["server"])) if file.get("server") else None
    if server:
        url, source = _normalise_url(server), "flag"
    elif os.environ.get(ENV_SERVER):
        url, source = _normalise_url(os.environ[ENV_SERVER]), "env"
    elif file_server:
        url, source = file_server, "config"
    else:
        url, source = DEFAULT_SERVER, "default"
    if not token:
        token = os.environ.get(ENV_TOKEN) or None
    if not token and file.get("token") and file_server == url:
        token = str(file["token"]).strip()
    project = project or os.environ.get(ENV_PROJECT) or str(file.get("project") or DEFAULT_PROJECT)
    return ClientConfig(url, token.strip() if token else None, project, source)


# --- kinds ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindRef:
    """What the client needs to know about a kind; from the local registry or the server's discovery."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...] = ()
    has_status: bool = True
    columns: tuple[Column, ...] = ()

    @classmethod
    def from_info(cls, info: KindInfo) -> KindRef:
        return cls(info.kind, info.plural, info.singular, info.short_names, info.has_status, info.columns)

    @classmethod
    def from_discovery(cls, entry: dict[str, Any]) -> KindRef:
        columns = tuple(
            Column(str(c["header"]), str(c["path"]), bool(c.get("wide"))) for c in entry.get("columns") or []
        )
        return cls(
            str(entry["kind"]),
            str(entry["plural"]),
            str(entry.get("singular") or str(entry["kind"]).lower()),
            tuple(entry.get("shortNames") or ()),
            bool(entry.get("hasStatus", True)),
            columns,
        )

    def matches(self, name: str) -> bool:
        lowered = name.lower()
        return name == self.kind or lowered in (self.kind.lower(), self.plural, self.singular, *self.short_names)


# --- results ----------------------------------------------------------------------------------------------


@dataclass
class ObjectList:
    kind: str
    items: list[dict[str, Any]]
    resource_version: str

    def as_document(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": f"{self.kind}List",
            "metadata": {"resourceVersion": self.resource_version},
            "items": self.items,
        }


@dataclass(frozen=True)
class WatchEvent:
    """ADDED, MODIFIED, DELETED or BOOKMARK, with the object (for BOOKMARK only its resourceVersion)."""

    type: str
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")


@dataclass
class _Known:
    """What a watch has seen, so a re-list after 410 Expired can report what changed in between."""

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def key(self, obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return str(meta.get("project", DEFAULT_PROJECT)), str(meta.get("name", ""))

    def observe(self, event: WatchEvent) -> None:
        if event.type == "DELETED":
            self.objects.pop(self.key(event.object), None)
        elif event.type in ("ADDED", "MODIFIED"):
            self.objects[self.key(event.object)] = event.object


def _selectors(selector: str | None, field_selector: str | None) -> dict[str, str]:
    params = {}
    if selector:
        params["labelSelector"] = selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


STORE_ASSIGNED = ("resourceVersion", "generation", "uid", "creationTimestamp")


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without its status and the metadata the store assigns on every write (what a user changes)."""
    body = {k: v for k, v in obj.items() if k != "status"}
    body["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in STORE_ASSIGNED}
    return body


# --- the client -------------------------------------------------------------------------------------------


class Client:
    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = _normalise_url(server)
        headers = {"Accept": "application/json", "User-Agent": "dpufleet-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)
        self._discovered: list[KindRef] | None = None
        self._openapi: dict[str, Any] | None = None
        self._dry_run_supported: bool | None = None

    @classmethod
    def from_config(cls, config: ClientConfig, **kwargs: Any) -> Client:
        return cls(config.server, config.token, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {}
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = content_type
        try:
            response = self._http.request(method, path, params=params, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._error(response.status_code, response.content)
        return orjson.loads(response.content) if response.content else None

    def _unreachable(self, exc: httpx.TransportError) -> Unreachable:
        if isinstance(exc, httpx.ConnectError):
            text = str(exc).lower()
            why = "connection refused" if "refused" in text else (str(exc) or "connection failed")
            return Unreachable(self.server, f"{why} (is 'dpufleet server' running? set DPUFLEET_SERVER or --server)")
        if isinstance(exc, httpx.TimeoutException):
            return Unreachable(self.server, "timed out")
        return Unreachable(self.server, str(exc) or type(exc).__name__)

    @staticmethod
    def _error(code: int, content: bytes) -> ClientError:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and body.get("kind") == "Status":
            return ClientError(
                int(body.get("code") or code),
                str(body.get("reason") or "Unknown"),
                str(body.get("message") or f"HTTP {code}"),
                body.get("details") or {},
            )
        if isinstance(body, dict) and "detail" in body:
            return ClientError(code, "Unknown", f"HTTP {code}: {body['detail']}")
        text = content.decode(errors="replace").strip()[:200]
        return ClientError(code, "Unknown", f"HTTP {code}: {text or 'no body'}")

    # --- kinds ------------------------------------------------------------------------------------------

    def discovery(self) -> list[KindRef]:
        """The kinds this server serves (cached for the life of the client)."""
        if self._discovered is None:
            body = self._request("GET", BASE)
            self._discovered = [KindRef.from_discovery(entry) for entry in body.get("kinds") or []]
        return self._discovered

    def resolve_kind(self, name: str | KindRef) -> KindRef:
        """A kind by kind, plural, singular or short name: the built-in registry first, then the server's."""
        if isinstance(name, KindRef):
            return name
        try:
            return KindRef.from_info(lookup(name))
        except UnknownKind:
            pass
        for ref in self.discovery():
            if ref.matches(name):
                return ref
        known = sorted({info.plural for info in REGISTRY.values()} | {ref.plural for ref in self.discovery()})
        raise ClientError(0, "UnknownKind", f"unknown kind {name!r}; known kinds: {', '.join(known)}")

    @staticmethod
    def _collection(ref: KindRef, project: str | None) -> str:
        if project is None:
            return f"{BASE}/{ref.plural}"
        return f"{BASE}/projects/{quote(project, safe='')}/{ref.plural}"

    def _item(self, ref: KindRef, name: str, project: str) -> str:
        return f"{self._collection(ref, project)}/{quote(name, safe='')}"

    # --- verbs ------------------------------------------------------------------------------------------

    def upload_blob(self, data: bytes) -> dict[str, Any]:
        """Put content into the image repository under its sha256 (kept only if the digest matches)."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            response = self._http.put(f"/images/v1/blobs/sha256/{digest}", content=data)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._error(response.status_code, response.content)
        result: dict[str, Any] = orjson.loads(response.content)
        return result

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/version")
        return result

    # --- people and audit -------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/auth/v1/whoami")
        return result

    def create_token(
        self, name: str, grants: builtins.list[str], expires: str | None = None, subject: str | None = None
    ) -> dict[str, Any]:
        """A new token; the reply's `token` is its plaintext, which the server never shows again."""
        body: dict[str, Any] = {"name": name, "grants": grants}
        if expires:
            body["expires"] = expires
        if subject:
            body["subject"] = subject
        result: dict[str, Any] = self._request("POST", "/auth/v1/tokens", body=body)
        return result

    def list_tokens(self) -> builtins.list[dict[str, Any]]:
        return list(self._request("GET", "/auth/v1/tokens").get("items") or [])

    def revoke_token(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("DELETE", f"/auth/v1/tokens/{quote(name, safe='')}")
        return result

    def audit_records(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return list(self._request("GET", "/audit/v1/records", params={"limit": str(limit)}).get("items") or [])

    def audit_verify(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/audit/v1/verify")
        return result

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def get(self, kind: str | KindRef, name: str, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", self._item(self.resolve_kind(kind), name, project))
        return result

    def list(
        self,
        kind: str | KindRef,
        project: str | None = DEFAULT_PROJECT,
        selector: str | None = None,
        field_selector: str | None = None,
        *,
        page_size: int | None = None,
    ) -> ObjectList:
        """Objects of a kind in one project, or in all projects when project is None; the whole list,
        fetched `page_size` objects at a time when given (following the server's continue tokens).

        The list's resourceVersion is the first page's: a watch from it replays whatever changed while
        the later pages were read, so nothing is missed."""
        ref = self.resolve_kind(kind)
        params: dict[str, str] = {}
        if selector:
            params["labelSelector"] = selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if page_size is not None:
            params["limit"] = str(page_size)
        items: builtins.list[dict[str, Any]] = []
        rv = ""
        while True:
            body = self._request("GET", self._collection(ref, project), params=params or None)
            meta = body.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")
            items.extend(body.get("items") or [])
            if not meta.get("continue"):
                return ObjectList(ref.kind, items, rv)
            params["continue"] = str(meta["continue"])

    def create(self, doc: dict[str, Any], project: str | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        """Create; with dry_run the server validates and answers what it would store, and writes nothing."""
        ref, project = self._doc_target(doc, project)
        result: dict[str, Any] = self._request(
            "POST", self._collection(ref, project), params=self._dry_run(dry_run), body=doc
        )
        return result

    def update(self, doc: dict[str, Any], project: str | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        """Replace spec and user metadata; a metadata.resourceVersion in doc makes it conditional."""
        ref, project = self._doc_target(doc, project)
        name = str(doc["metadata"]["name"])
        result: dict[str, Any] = self._request(
            "PUT", self._item(ref, name, project), params=self._dry_run(dry_run), body=doc
        )
        return result

    def patch(
        self,
        kind: str | KindRef,
        name: str,
        patch: dict[str, Any],
        project: str = DEFAULT_PROJECT,
        *,
        status: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of the object, or of its status subresource."""
        path = self._item(self.resolve_kind(kind), name, project) + ("/status" if status else "")
        result: dict[str, Any] = self._request(
            "PATCH", path, params=self._dry_run(dry_run), body=patch, content_type="application/merge-patch+json"
        )
        return result

    def status(self, kind: str | KindRef, name: str, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", self._item(self.resolve_kind(kind), name, project) + "/status")
        return result

    def update_status(
        self,
        kind: str | KindRef,
        name: str,
        status: dict[str, Any],
        project: str = DEFAULT_PROJECT,
        rv: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if rv:
            body["metadata"] = {"resourceVersion": rv}
        path = self._item(self.resolve_kind(kind), name, project) + "/status"
        result: dict[str, Any] = self._request("PUT", path, body=body)
        return result

    def delete(
        self, kind: str | KindRef, name: str, project: str = DEFAULT_PROJECT, resource_version: str | None = None
    ) -> dict[str, Any]:
        """Delete; the returned object still has finalizers (and a deletionTimestamp) if it is only marked."""
        params = {"resourceVersion": resource_version} if resource_version else None
        result: dict[str, Any] = self._request(
            "DELETE", self._item(self.resolve_kind(kind), name, project), params=params
        )
        return result

    def apply(
        self, doc: dict[str, Any], project: str | None = None, *, dry_run: bool = False
    ) -> tuple[dict[str, Any], str]:
        """Create the object, or replace its spec and the metadata the document names.

        Returns the stored object and "created", "configured" or "unchanged". Metadata fields the
        document leaves out (labels, annotations, finalizers, ownerReferences) keep their current
        values, so applying a file never strips a controller's finalizer. With dry_run the object
        returned is what the server would store; nothing is written.
        """
        ref, project = self._doc_target(doc, project)
        name = str(doc["metadata"]["name"])
        try:
            current = self.get(ref, name, project)
        except ClientError as exc:
            if exc.code != 404:
                raise
            try:
                return self.create(doc, project, dry_run=dry_run), "created"
            except ClientError as create_error:
                if create_error.reason != "AlreadyExists":
                    raise
                # made meanwhile (a controller or an agent discovered it): apply to what is there
                current = self.get(ref, name, project)
        body = dict(doc)
        meta = dict(doc["metadata"])
        meta.pop("resourceVersion", None)
        for key in ("labels", "annotations", "finalizers", "ownerReferences"):
            if key not in meta and key in current["metadata"]:
                meta[key] = current["metadata"][key]
        body["metadata"] = meta
        body.pop("status", None)
        result = self.update(body, project, dry_run=dry_run)
        if dry_run:  # a dry run need not move the resourceVersion: compare what would be stored
            changed = comparable(result) != comparable(current)
        else:
            changed = result["metadata"].get("resourceVersion") != current["metadata"].get("resourceVersion")
        return result, "configured" if changed else "unchanged"

    # --- server-side dry run ----------------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (cached for the life of the client)."""
        if self._openapi is None:
            body = self._request("GET", "/openapi.json")
            self._openapi = body if isinstance(body, dict) else {}
        return self._openapi

    def supports_dry_run(self) -> bool:
        """Whether the server's OpenAPI document declares the `dryRun` query parameter.

        A server that predates dry run ignores an unknown query parameter and *writes*: asking first
        is what keeps `dry_run=True` from ever changing anything on such a server.
        """
        if self._dry_run_supported is None:
            self._dry_run_supported = any(
                param.get("name") == "dryRun" and param.get("in") == "query"
                for item in (self.openapi().get("paths") or {}).values()
                for operation in (item.values() if isinstance(item, dict) else ())
                if isinstance(operation, dict)
                for param in operation.get("parameters") or ()
                if isinstance(param, dict)
            )
        return self._dry_run_supported

    def _dry_run(self, dry_run: bool) -> dict[str, str] | None:
        if not dry_run:
            return None
        if not self.supports_dry_run():
            raise ClientError(
                0,
                "DryRunUnsupported",
                f"the server at {self.server} does not support server-side dry run (no dryRun parameter in its "
                "OpenAPI document); nothing was sent",
            )
        return {"dryRun": "All"}

    def _doc_target(self, doc: dict[str, Any], project: str | None) -> tuple[KindRef, str]:
        if not isinstance(doc, dict):
            raise ClientError(0, "BadRequest", "a resource must be a mapping")
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            raise ClientError(0, "BadRequest", "kind: required field is missing")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ClientError(0, "BadRequest", "metadata.name: required field is missing")
        ref = self.resolve_kind(kind)
        return ref, str(meta.get("project") or project or DEFAULT_PROJECT)

    # --- watch ------------------------------------------------------------------------------------------

    def watch(
        self,
        kind: str | KindRef,
        project: str | None = DEFAULT_PROJECT,
        selector: str | None = None,
        resource_version: str | None = None,
        *,
        field_selector: str | None = None,
        bookmarks: bool = False,
        max_retry_delay: float = 5.0,
    ) -> Iterator[WatchEvent]:
        """Events for a kind, forever. Without resource_version, current objects come first as ADDED.

        The server ends each watch stream after its timeout; the client then watches on from the
        last resourceVersion it saw, as on a dropped connection. On a dropped connection it resumes from the last resourceVersion it saw, so nothing is
        missed or repeated. When the server answers 410 Expired (history compacted, or the watch
        fell behind) it re-lists and reports the difference against what it had seen — ADDED,
        MODIFIED and DELETED events — then watches on from the list's resourceVersion. Only a
        failure on the very first connection is raised; later ones are retried with backoff.
        """
        ref = self.resolve_kind(kind)
        known = _Known()
        rv = resource_version
        connected_once = False
        delay = 0.2
        while True:
            try:
                for event in self._watch_once(ref, project, selector, rv, field_selector):
                    connected_once = True
                    delay = 0.2
                    if event.type == "ERROR":
                        if int(event.object.get("code") or 0) != 410:
                            raise self._error(int(event.object.get("code") or 500), orjson.dumps(event.object))
                        raise ClientError(410, "Expired", str(event.object.get("message") or "expired"))
                    rv = event.resource_version or rv
                    known.observe(event)
                    if event.type != "BOOKMARK" or bookmarks:
                        yield event
            except ClientError as exc:
                if exc.code == 410:
                    events, rv = self._relist(ref, project, selector, known, field_selector)
                    yield from events
                    continue
                if not (isinstance(exc, Unreachable) and connected_once):
                    raise
            except httpx.TransportError:
                if not connected_once:
                    raise self._unreachable(httpx.ConnectError("connection failed")) from None
            # the stream ended or broke: resume from rv after a short, growing pause
            time.sleep(delay)
            delay = min(delay * 2, max_retry_delay)

    def _watch_once(
        self, ref: KindRef, project: str | None, selector: str | None, rv: str | None, field_selector: str | None
    ) -> Iterator[WatchEvent]:
        params = _selectors(selector, field_selector)
        if rv:
            params["resourceVersion"] = rv
        timeout = httpx.Timeout(10.0, read=WATCH_READ_TIMEOUT)
        path = BASE + "/watch" + self._collection(ref, project).removeprefix(BASE)
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise self._error(response.status_code, response.read())
                for line in response.iter_lines():
                    if line.strip():
                        body = orjson.loads(line)
                        yield WatchEvent(str(body.get("type")), body.get("object") or {})
        except httpx.ConnectError as exc:
            raise self._unreachable(exc) from None

    def telemetry_watch(self, project: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The live telemetry of a project's DPUs (GET /telemetry/v1/projects/{project}/watch), one sample or
        event per item, until the server ends the stream; keep-alives are not yielded."""
        path = f"/telemetry/v1/projects/{quote(project, safe='')}/watch"
        timeout = httpx.Timeout(10.0, read=WATCH_READ_TIMEOUT)
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise self._error(response.status_code, response.read())
                for line in response.iter_lines():
                    if line.strip():
                        body: dict[str, Any] = orjson.loads(line)
                        if body.get("type") == "KEEPALIVE":
                            continue
                        if body.get("type") == "ERROR":
                            raise ClientError(0, "WatchCutOff", str(body.get("message")))
                        yield body
        except httpx.ConnectError as exc:
            raise self._unreachable(exc) from None

    def telemetry_accounting(self, project: str) -> builtins.list[dict[str, Any]]:
        """Per DPU: the samples its agent produced, delivered, dropped and buffered, and what arrived."""
        result: dict[str, Any] = self._request("GET", f"/telemetry/v1/projects/{quote(project, safe='')}/accounting")
        items: builtins.list[dict[str, Any]] = result.get("items") or []
        return items

    def telemetry_rollup(self, project: str, metric: str, by: str, match: str | None = None) -> dict[str, Any]:
        """One metric's latest values summed up per group (host, vendor, model, dpuset, label:<key>)."""
        params = {"metric": metric, "by": by, **({"match": match} if match else {})}
        result: dict[str, Any] = self._request(
            "GET", f"/telemetry/v1/projects/{quote(project, safe='')}/rollup", params=params
        )
        return result

    def _relist(
        self, ref: KindRef, project: str | None, selector: str | None, known: _Known, field_selector: str | None
    ) -> tuple[builtins.list[WatchEvent], str]:
        listed = self.list(ref, project, selector, field_selector)
        events: builtins.list[WatchEvent] = []
        seen: set[tuple[str, str]] = set()
        for obj in listed.items:
            key = known.key(obj)
            seen.add(key)
            before = known.objects.get(key)
            if before is None:
                events.append(WatchEvent("ADDED", obj))
            elif (before.get("metadata") or {}).get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                events.append(WatchEvent("MODIFIED", obj))
        for key, obj in list(known.objects.items()):
            if key not in seen:
                events.append(WatchEvent("DELETED", obj))
        for event in events:
            known.observe(event)
        return events, listed.resource_version
