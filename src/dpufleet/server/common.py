"""What every router of the API server shares: the server's state and the request/response helpers.

Routers import this module and app.py imports the routers, so no module of server/ imports
app.py and there is no cycle between them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from ..api.errors import BadRequest, Invalid, TooLarge, UnsupportedMediaType
from ..api.validation import describe_errors
from ..plane import Services
from ..security.audit import AuditLog
from ..store.feed import ChangeFeed
from ..store.store import Store, WriteHook
from .auth import TokenAuthenticator
from .execs import ExecBroker
from .telemetry import TelemetryPlane

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# How long the server keeps an idle kept-alive connection open. uvicorn's default, 5 s, is also httpx's
# client-side keepalive_expiry: the server could close an idle connection just as a client sent its next
# request on it, and that request failed (ReadError, RemoteProtocolError: "Server disconnected") under
# load. Longer than any client's expiry (75 s, as nginx's keepalive_timeout), a client always retires an
# idle connection first.
KEEP_ALIVE_SECONDS = 75
# Connections the kernel queues before they are accepted: a burst of clients (a bench's, a fleet's agents
# reconnecting) waits in it instead of being refused (uvicorn's default; capped by net.core.somaxconn).
BACKLOG = 2048


class UvicornOptions(TypedDict):
    timeout_keep_alive: int
    backlog: int


def uvicorn_options() -> UvicornOptions:
    """What every uvicorn of the control plane is given: serve(), the agent listener, the demo, the tests'
    threaded server."""
    return {"timeout_keep_alive": KEEP_ALIVE_SECONDS, "backlog": BACKLOG}


MAX_BODY = 1024 * 1024


@dataclass
class ServerState:
    store: Store
    auth: TokenAuthenticator
    feed: ChangeFeed
    audit: AuditLog
    services: Services  # what the routes share with the controllers (plane.py)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ready: bool = False
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # the Prometheus text of the controller process, merged into /metrics ("" when it does not answer)
    more_metrics: Callable[[], Coroutine[Any, Any, str]] | None = None
    controllers_status: Callable[[], str] | None = None  # the controller process's, in /readyz
    telemetry: TelemetryPlane | None = None  # the fleet bus's aggregator (server/telemetry.py), when it runs
    # (project, DPU, where: DPU or Host) -> service -> its instance's last log lines, as that runtime (the
    # DPU's, or its host agent's) last sent them: during a host<->DPU move both are kept, apart
    service_logs: dict[tuple[str, str, str], dict[str, list[str]]] = field(default_factory=dict)
    execs: ExecBroker = field(default_factory=ExecBroker)  # `dpufleet service exec` (server/execs.py)
    # SQLite takes one writer at a time: a single writer thread avoids dozens of threads
    # fighting over the GIL and the write lock. Reads run beside it.
    _writer: ThreadPoolExecutor | None = None
    _reader: ThreadPoolExecutor | None = None
    _batcher: CreateBatcher | None = None

    def __post_init__(self) -> None:
        self._writer = ThreadPoolExecutor(1 if self.store.is_sqlite else 8, thread_name_prefix="store-write")
        self._reader = ThreadPoolExecutor(4, thread_name_prefix="store-read")

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(fn, *args))

    async def create(self, doc: dict[str, Any], hook: WriteHook | None = None) -> dict[str, Any]:
        """Create through the group-commit batcher: concurrent creates share one transaction."""
        if self._batcher is None:
            self._batcher = CreateBatcher(self)
        return await self._batcher.submit(doc, hook)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, functools.partial(fn, *args))


class CreateBatcher:
    """Group commit for creates: while one batch is being written, new creates gather for the next.

    No request waits for a timer: an idle server writes a lone create at once; a busy one
    writes everything that arrived meanwhile in one transaction. Each create is answered
    only after its transaction committed.
    """

    MAX_BATCH = 256

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.pending: list[tuple[dict[str, Any], WriteHook | None, asyncio.Future[dict[str, Any]]]] = []
        self.running = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, doc: dict[str, Any], hook: WriteHook | None = None) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending.append((doc, hook, future))
        if not self.running:
            self.running = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
                try:
                    results = await self.state.write(
                        self.state.store.create_many, [doc for doc, _, _ in batch], [hook for _, hook, _ in batch]
                    )
                except Exception as exc:  # the store failed as a whole: every waiter hears of it
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.running = False


def json_response(body: bytes | str, status: int = 200) -> Response:
    """A JSON body that is already serialised (a list joins the stored documents as they are)."""
    return Response(body, status_code=status, media_type="application/json")


def respond(obj: Any, status: int = 200) -> Response:
    """`obj` as a JSON response, serialised by orjson (several times faster than FastAPI's encoder)."""
    return json_response(orjson.dumps(obj), status)


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """A request's body as it streams in, without the empty chunks the server may hand over (uploads)."""
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def read_json(request: Request, *, patch: bool = False) -> Any:
    """The request body as JSON, refusing a wrong Content-Type, an empty body or one over MAX_BODY."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    allowed = ("application/merge-patch+json", "application/json") if patch else ("application/json",)
    if ctype not in allowed:
        raise UnsupportedMediaType(f"Content-Type {ctype!r} is not accepted here; send {' or '.join(allowed)}")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise TooLarge(f"request body is {length} bytes; the limit is {MAX_BODY}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"request body exceeds the limit of {MAX_BODY} bytes")
    if not body.strip():
        raise BadRequest("request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def build_state(store: Store, auth: TokenAuthenticator, services: Services | None = None) -> ServerState:
    return ServerState(
        store=store, auth=auth, feed=ChangeFeed(store), audit=AuditLog(store), services=services or Services(store)
    )


async def read_model(request: Request, model: type[M], what: str) -> M:
    """The request body as `model`; a body that does not fit is 422 '<what> is invalid: field: problem'."""
    try:
        return model.model_validate(await read_json(request))
    except ValidationError as exc:
        summary, causes = describe_errors(exc)
        raise Invalid(f"{what} is invalid: {summary}", {"causes": causes}) from None
