"""The agent listener: its own port, TLS with client certificates from the fleet CA.

What an agent may do here, and with what proof:

    GET  /agent/v1/ca       anyone (the fleet CA certificate; agents pin its hash)
    POST /agent/v1/enroll   a one-time token or an IDevID proof, plus a CSR
    POST /agent/v1/renew    a current fleet certificate, plus a CSR for a new key
    POST /agent/v1/report   a current fleet certificate naming the DPU/host the report is for
    GET  /agent/v1/install, POST /agent/v1/install/status
                            a DPU's fleet certificate: its own install order; a host's: the
                            host-channel orders of its own DPUs (server/agent_install.py)
    GET  /agent/v1/network, POST /agent/v1/network/status
                            a DPU's fleet certificate: its own desired network, its report on it
                            (server/agent_network.py)
    GET  /agent/v1/services, POST /agent/v1/services/status
                            a DPU's fleet certificate: the instances it should run, their phases
                            and log tails (server/agent_services.py)

TLS requests a client certificate on every connection (CERT_OPTIONAL, so that
enrollment works before a device has one); a certificate that is presented is
verified in the handshake, so expired or foreign-CA certificates never reach the
application, and the handshake failure is logged with OpenSSL's reason.
Revocation and "this certificate speaks for that device" are checked per request.
The project of the device is never assumed: it is resolved from its objects, its
enrollment token or its Discovery (inventory/tenancy.py), and a device none of them
places is refused (403 NoProject).

The peer certificate reaches the ASGI app as the ASGI TLS extension
(`scope["extensions"]["tls"]["client_cert_chain"]`): uvicorn does not fill it, so
`MTLSProtocol` (uvicorn's own HTTP protocol, subclassed) adds it per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import uvicorn
from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

try:  # the protocol uvicorn's "auto" picks: httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HTTPProtocol
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTPProtocol  # type: ignore[assignment]

from ..api.errors import APIError, BadRequest, Forbidden, Invalid, Unauthorized
from ..api.validation import describe_errors
from ..crypto.pki import AgentIdentity, FleetCA, PKIError, cert_pem
from ..inventory.reports import AgentReport, ReportHandler
from ..security.enroll import EnrollmentAuthority, EnrollmentRefused, EnrollRequest, RenewRequest
from .agent_flavor import add_flavor_routes
from .agent_install import add_install_routes
from .agent_network import add_network_routes
from .agent_services import add_service_routes
from .agent_updates import add_update_routes
from .common import ServerState, read_json, respond, uvicorn_options

log = logging.getLogger(__name__)
AGENT_PREFIX = "/agent/v1"
DEFAULT_AGENT_LISTEN = "127.0.0.1:8741"


class LoggingSSLObject(ssl.SSLObject):
    """Logs why a client's certificate failed verification (asyncio drops the reason silently)."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLCertVerificationError as exc:
            log.warning("agent TLS handshake refused: client certificate %s", exc.verify_message)
            raise
        except ssl.SSLError as exc:
            if exc.reason not in (None, "WRONG_VERSION_NUMBER"):
                log.warning("agent TLS handshake failed: %s", exc.reason or exc)
            raise


def server_tls_context(ca: FleetCA, hosts: list[str]) -> ssl.SSLContext:
    cert, key = ca.server_credentials(hosts)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(ca.cert_path))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.sslobject_class = LoggingSSLObject
    return ctx


class MTLSProtocol(_HTTPProtocol):
    """uvicorn's HTTP protocol plus the ASGI TLS extension carrying the verified peer certificate."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        tls: dict[str, Any] = {
            "server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
        inner: Any = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = app


@lru_cache(maxsize=4096)
def _parse_peer(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _source(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def peer_identity(request: Request, ca: FleetCA) -> AgentIdentity:
    """The device the verified client certificate names, or 401/403 with the reason logged."""
    chain = ((request.scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
    if not chain:
        log.warning("agent request to %s from %s refused: no client certificate", request.url.path, _source(request))
        raise Unauthorized("this endpoint needs the agent's fleet client certificate (enroll first)")
    cert = _parse_peer(chain[0])
    try:
        return ca.verify_issued(cert)
    except PKIError as exc:
        log.warning("agent request to %s from %s refused: %s", request.url.path, _source(request), exc)
        raise Forbidden(f"client certificate refused: {exc}") from None


def agent_app(state: ServerState, handler: ReportHandler, authority: EnrollmentAuthority) -> FastAPI:
    app = FastAPI(title="dpufleet agent protocol", docs_url=None, redoc_url=None, openapi_url=None)
    ca = authority.ca

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.to_status(), status_code=exc.code)

    @app.exception_handler(EnrollmentRefused)
    async def _refused(_request: Request, exc: EnrollmentRefused) -> JSONResponse:
        body = Forbidden(f"enrollment refused: {exc.message}", {"reasonCode": str(exc.code)}).to_status()
        return JSONResponse(body, status_code=403)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(BadRequest(f"invalid request: {exc.errors()[:1]}").to_status(), status_code=400)

    def parse(model: type[Any], body: Any, what: str) -> Any:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            summary, causes = describe_errors(exc)
            raise Invalid(f"{what} is invalid: {summary}", {"causes": causes}) from None

    @app.get(AGENT_PREFIX + "/ca")
    async def ca_certificate() -> Response:
        return Response(cert_pem(ca.certificate), media_type="application/x-pem-file")

    @app.post(AGENT_PREFIX + "/enroll")
    async def enroll(request: Request) -> Response:
        body = parse(EnrollRequest, await read_json(request), "enrollment request")
        reply = await state.write(authority.enroll, body, _source(request))
        return respond(reply.model_dump())

    @app.post(AGENT_PREFIX + "/renew")
    async def renew(request: Request) -> Response:
        identity = peer_identity(request, ca)
        body = parse(RenewRequest, await read_json(request), "renewal request")
        reply = await state.write(authority.renew, identity, body, _source(request))
        return respond(reply.model_dump())

    @app.post(AGENT_PREFIX + "/report")
    async def report(request: Request) -> Response:
        identity = peer_identity(request, ca)
        parsed: AgentReport = parse(AgentReport, await read_json(request), "agent report")
        if (parsed.role, parsed.serial) != (identity.role, identity.serial):
            log.warning(
                "agent report from %s refused: the certificate names %s but the report speaks for %s/%s",
                _source(request),
                identity,
                parsed.role,
                parsed.serial,
            )
            raise Forbidden(f"this certificate speaks for {identity}, not {parsed.role}/{parsed.serial}")
        reply = handler.reply_without_write(parsed)  # a heartbeat not due to be stored: no queue behind the writer
        if reply is None:
            reply = await state.write(handler.handle, parsed)
        return respond(reply.model_dump())

    _ = (ca_certificate, enroll, renew, report)
    # one resolver for reports, installs and updates: a device is in the same project on every path
    add_install_routes(app, state, lambda request: peer_identity(request, ca), handler.resolver)
    add_update_routes(app, state, lambda request: peer_identity(request, ca), handler.resolver)
    add_network_routes(app, state, lambda request: peer_identity(request, ca), handler.resolver)
    add_flavor_routes(app, state, lambda request: peer_identity(request, ca), handler.resolver)
    add_service_routes(app, state, lambda request: peer_identity(request, ca), handler.resolver)
    return app


class _EmbeddedUvicorn(uvicorn.Server):
    """A second uvicorn server inside the API server's loop: the API server owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class AgentListener:
    """Bound at build time (so its URL is known before it serves), served as a background task."""

    sock: socket.socket
    url: str
    app: FastAPI
    tls: ssl.SSLContext

    @classmethod
    def bind(cls, host: str, port: int, app: FastAPI, ca: FleetCA, advertise: str | None = None) -> AgentListener:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        bound = sock.getsockname()[1]
        name = advertise or (socket.gethostname() if host in ("0.0.0.0", "::") else host)
        tls = server_tls_context(ca, [name] if name else [])
        shown = f"[{name}]" if ":" in name else name
        return cls(sock, f"https://{shown}:{bound}", app, tls)

    async def run(self) -> None:
        config = uvicorn.Config(
            self.app,
            http=MTLSProtocol,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            ssl_context_factory=lambda _config, _default: self.tls,
            **uvicorn_options(),
        )
        server = _EmbeddedUvicorn(config)
        serving = asyncio.ensure_future(server.serve(sockets=[self.sock]))
        log.info("agent listener (mTLS) on %s", self.url)
        try:
            await asyncio.shield(serving)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(serving), 5)

    def close(self) -> None:
        self.sock.close()
