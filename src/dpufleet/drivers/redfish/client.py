"""An async Redfish client: what the control plane needs from a BMC, over plain HTTP(S).

Async rather than sushy's blocking client because a fleet is crawled concurrently: a
real BlueField-3 BMC answers in about 0.3 s per request, so hundreds of BMCs must be in
flight at once. aiohttp rather than httpx because the control plane sends tens of
Redfish requests a second per thousand DPUs: aiohttp costs about 0.25 ms of CPU per
request here, httpx about 1.3 ms (docs/architecture.md). sushy is used in the tests as
an independent peer to cross-check our emulated BMC.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import random
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson


class RedfishError(Exception):
    """A BMC answered, but not as a Redfish service should (or with an error)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "RedfishError") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class BMCUnreachable(RedfishError):
    def __init__(self, message: str) -> None:
        super().__init__(message, None, "Unreachable")


class AuthenticationFailed(RedfishError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 401, "AuthenticationFailed")


class NotRedfish(RedfishError):
    def __init__(self, message: str) -> None:
        super().__init__(message, None, "NotRedfish")


@functools.cache
def tls_context(verify: bool) -> ssl.SSLContext:
    """One TLS context per mode for the whole process: building one loads the CA bundle (~10 ms)."""
    if verify:
        return ssl.create_default_context()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # BMCs ship self-signed certificates; verifyTLS=false is the operator's choice
    return ctx


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password, even in a traceback
        return f"Credentials(username={self.username!r}, password=<redacted>)"


def _extended_message(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            infos = err.get("@Message.ExtendedInfo") or []
            if infos and isinstance(infos[0], dict) and infos[0].get("Message"):
                return str(infos[0]["Message"])
            return str(err.get("message", ""))
    return ""


# Documents lasting() keeps (service root, UpdateService, TaskService) are read again after this: a
# pooled client lives as long as its BMC is used, and a BMC's firmware update may change them.
LASTING_SECONDS = 60.0


class Transport:
    """What the clients of one BMC connection share: the HTTP session (its keep-alive connections),
    the request slots a BMC can serve at once, and the documents read once (lasting()).

    Separate from RedfishClient so that callers with their own timeout and retries
    (RedfishClient.with_options) still share one connection pool and one slot count per BMC. A
    retired transport (its BMC's address or credentials changed) closes its session once the
    requests in flight on it are done; one still used after that opens a session again and closes
    it when idle, so a caller holding an old client never fails for it.
    """

    def __init__(self, *, http: aiohttp.ClientSession | None, verify: bool, max_concurrency: int) -> None:
        self._own_http = http is None
        self._http = http  # made in the running event loop at first use
        self.verify = verify
        self.max_concurrency = max_concurrency
        self.slots = asyncio.Semaphore(max_concurrency)  # real BMCs serve a few requests at a time
        self.lasting: dict[str, tuple[dict[str, Any], float]] = {}  # path -> (document, monotonic read time)
        self.in_flight = 0
        self.retired = False
        # the service root says the BMC expands a collection's members in place (Redfish $expand): one
        # request for a collection instead of one per member
        self.expand_members = False

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or (self._own_http and self._http.closed):
            connector = aiohttp.TCPConnector(limit=self.max_concurrency, ssl=tls_context(self.verify))
            self._http = aiohttp.ClientSession(connector=connector)
        return self._http

    @property
    def closed(self) -> bool:
        return self._http is None or self._http.closed

    async def close(self) -> None:
        if self._own_http and self._http is not None and not self._http.closed:
            await self._http.close()

    async def retire(self) -> None:
        """No new owner will use it: close now if idle, else when its last request in flight ends."""
        self.retired = True
        if self.in_flight == 0:
            await self.close()

    async def finished(self) -> None:
        self.in_flight -= 1
        if self.retired and self.in_flight == 0:
            await self.close()


EXPAND_MEMBERS = "$expand=.($levels=1)"  # DSP0266 7.3: subordinate resources (a collection's members), one level


def expands_members(root: dict[str, Any]) -> bool:
    """Whether a service root's ProtocolFeaturesSupported offers $expand of subordinate links, one level."""
    features = root.get("ProtocolFeaturesSupported")
    expand = features.get("ExpandQuery") if isinstance(features, dict) else None
    if not isinstance(expand, dict):
        return False
    levels = expand.get("MaxLevels")
    return (expand.get("NoLinks") is True or expand.get("ExpandAll") is True) and (
        expand.get("Levels") is not True or not isinstance(levels, int) or levels >= 1
    )


class RedfishClient:
    """One BMC. `base_url` is the service's root, e.g. https://198.51.100.7 or
    http://127.0.0.1:8443/bmc/b1 (many emulated BMCs behind one port)."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None,
        *,
        http: aiohttp.ClientSession | None = None,
        verify: bool = True,
        timeout: float = 10.0,
        max_concurrency: int = 4,
        retries: int = 3,
        transport: Transport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.credentials = credentials
        # a client given a transport shares it and does not close it (its pool does: drivers/redfish/pool.py)
        self._closes = transport is None
        self.transport = transport or Transport(http=http, verify=verify, max_concurrency=max_concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._authorization = (
            {
                "Authorization": "Basic "
                + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
            }
            if credentials is not None
            else {}
        )
        self.timeout = timeout
        self.retries = retries

    def with_options(self, *, timeout: float | None = None, retries: int | None = None) -> RedfishClient:
        """The same BMC connection with another caller's timeout and retries (health polls with a short
        timeout and no retry, provisioning with retries): connections, request slots and lasting
        documents stay shared, and closing the returned client leaves them open."""
        return RedfishClient(
            self.base_url,
            self.credentials,
            timeout=self.timeout if timeout is None else timeout,
            retries=self.retries if retries is None else retries,
            transport=self.transport,
        )

    async def __aenter__(self) -> RedfishClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection this client made; a pooled one (given its transport) is left to its pool."""
        if self._closes:
            await self.transport.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The session (made in the running event loop at first use)."""
        return self.transport.http

    def url(self, odata_id: str) -> str:
        """Resolve an @odata.id (absolute path on the BMC's origin) or a path under /redfish/v1."""
        if odata_id.startswith(("http://", "https://")):
            return odata_id
        if not odata_id.startswith("/"):
            odata_id = "/redfish/v1/" + odata_id
        if self.prefix and not odata_id.startswith(self.prefix + "/"):
            odata_id = self.prefix + odata_id
        return self.origin + odata_id

    async def _send(self, method: str, url: str, json: Any, anonymous: bool) -> tuple[int, bytes, Mapping[str, str]]:
        headers = None if anonymous else self._authorization
        async with self.http.request(method, url, json=json, headers=headers, timeout=self._timeout) as resp:
            return resp.status, await resp.read(), resp.headers

    async def request(
        self, method: str, path: str, *, json: Any = None, anonymous: bool = False
    ) -> tuple[int, Any, Mapping[str, str]]:
        self.transport.in_flight += 1
        try:
            return await self._request(method, self.url(path), json, anonymous)
        finally:
            await self.transport.finished()

    async def _request(self, method: str, url: str, json: Any, anonymous: bool) -> tuple[int, Any, Mapping[str, str]]:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                async with self.transport.slots:
                    try:
                        status, data, headers = await self._send(method, url, json, anonymous)
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        # A kept-alive connection the BMC closed while idle fails at once: a GET is sent again,
                        # once, on a fresh connection before it counts (a BMC really gone fails this one too).
                        # Never an action: it may have been carried out before the connection broke.
                        if method != "GET":
                            raise
                        status, data, headers = await self._send(method, url, json, anonymous)
            except TimeoutError as exc:
                last = BMCUnreachable(f"{url}: timed out after {self.timeout:g}s")
                last.__cause__ = exc
            except aiohttp.ClientError as exc:
                last = BMCUnreachable(f"{url}: {type(exc).__name__}: {exc}".rstrip(": "))
            else:
                if status == 503 and attempt < self.retries:
                    retry_after = headers.get("Retry-After", "")
                    delay = min(float(retry_after) if retry_after.isdigit() else 0.5, 5.0)
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
                    continue
                return status, self._decode(url, status, data), headers
            if attempt < self.retries:
                await asyncio.sleep(0.2 * 2**attempt * (0.5 + random.random() / 2))
        assert last is not None
        raise last

    @staticmethod
    def _decode(url: str, status: int, data: bytes) -> Any:
        if not data:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            if status < 400:
                raise NotRedfish(f"{url}: answered HTTP {status} with a body that is not JSON") from None
            return None

    async def get(self, path: str, *, anonymous: bool = False) -> dict[str, Any]:
        status, body, _ = await self.request("GET", path, anonymous=anonymous)
        if status == 401:
            raise AuthenticationFailed(f"{self.url(path)}: the BMC refused the credentials")
        if status >= 400:
            detail = _extended_message(body)
            raise RedfishError(f"GET {self.url(path)}: HTTP {status}{': ' + detail if detail else ''}", status)
        if not isinstance(body, dict):
            raise NotRedfish(f"{self.url(path)}: expected a JSON object")
        return body

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any, Mapping[str, str]]:
        status, payload, headers = await self.request("POST", path, json=body)
        if status == 401:
            raise AuthenticationFailed(f"{self.url(path)}: the BMC refused the credentials")
        if status >= 400:
            detail = _extended_message(payload)
            raise RedfishError(f"POST {self.url(path)}: HTTP {status}{': ' + detail if detail else ''}", status)
        return status, payload, headers

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        status, payload, _ = await self.request("PATCH", path, json=body)
        if status >= 400:
            detail = _extended_message(payload)
            raise RedfishError(f"PATCH {self.url(path)}: HTTP {status}{': ' + detail if detail else ''}", status)

    async def lasting(self, path: str) -> dict[str, Any]:
        """GET a document that does not change while the BMC runs -- the service root, the UpdateService
        and TaskService documents, whose links and actions an update follows -- read once a minute per
        BMC connection (a provisioning pass would otherwise read them each time)."""
        kept = self.transport.lasting.get(path)
        if kept is not None and time.monotonic() - kept[1] < LASTING_SECONDS:
            return kept[0]
        body = await self.get(path)
        self.transport.lasting[path] = (body, time.monotonic())
        return body

    async def service_root(self) -> dict[str, Any]:
        """The anonymous service root; raises NotRedfish when the endpoint is some other HTTP service."""
        root = await self.get("/redfish/v1", anonymous=True)
        if "RedfishVersion" not in root and "@odata.id" not in root:
            raise NotRedfish(f"{self.url('/redfish/v1')}: JSON, but not a Redfish service root")
        self.learn_features(root)
        return root

    def learn_features(self, root: dict[str, Any]) -> None:
        """What the service root says the BMC supports that saves requests."""
        self.transport.expand_members = expands_members(root)

    async def members(self, collection: str) -> list[dict[str, Any]]:
        """Every member of a collection: expanded in the collection's own answer where the BMC offers
        $expand, else (and for any member it left as a bare link) fetched concurrently, within the BMC's
        limit."""
        expand = self.transport.expand_members and "?" not in collection
        coll: dict[str, Any] | None = None
        if expand:
            try:
                coll = await self.get(f"{collection}?{EXPAND_MEMBERS}")
            except RedfishError as exc:
                if exc.status not in (400, 404, 405, 501):
                    raise
                # offered in the root but refused here (a mockup, a firmware that says more than it does):
                # this BMC is read member by member from now on
                self.transport.expand_members = expand = False
        if coll is None:
            coll = await self.get(collection)
        members = coll.get("Members")
        if members is not None and not isinstance(members, list):
            raise RedfishError(
                f"{self.url(collection)}: malformed Redfish: Members is not a list", None, "MalformedRedfish"
            )
        found: list[dict[str, Any] | None] = []
        links: list[tuple[int, str]] = []
        for member in members or []:
            if not (isinstance(member, dict) and isinstance(member.get("@odata.id"), str)):
                continue
            if expand and len(member) > 1 and "@odata.type" in member:
                found.append(member)  # expanded in place
            else:
                links.append((len(found), member["@odata.id"]))
                found.append(None)
        fetched = await asyncio.gather(*(self.get(link) for _, link in links))
        for (index, _), body in zip(links, fetched, strict=True):
            found[index] = body
        return [body for body in found if body is not None]

    @staticmethod
    def link(resource: dict[str, Any], name: str) -> str | None:
        value = resource.get(name)
        if isinstance(value, dict) and isinstance(value.get("@odata.id"), str):
            return str(value["@odata.id"])
        return None
