"""Starting the API server: data dir, store, bootstrap token, fleet CA, the controllers, uvicorn.

`dpufleet server` runs the controllers as a child process (server/controllers.py); `Server.build`
(the demo, the tests) runs them in this process when asked (`controllers=True`).

One process serves two listeners: the API (bearer tokens) and the agent listener
(mTLS with fleet certificates). The agent listener is bound in `Server.build`, so
its URL is known at once, and served from the API app's lifespan, so every way of
running the API server (CLI, demo, tests) runs it too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from ..api.naming import host_port
from ..crypto.onboarding import OnboardingKey
from ..crypto.pki import FleetCA
from ..crypto.secrets import SecretBox
from ..images.repository import ImageRepository, advertise_repository
from ..inventory.reports import ReportHandler
from ..inventory.tenancy import ProjectResolver
from ..plane import Services
from ..security.audit import AuditLog
from ..security.enroll import EnrollmentAuthority
from ..security.oidc import OIDCConfig, OIDCVerifier
from ..store.store import Store, default_sqlite_url
from ..tuning import tune_gc
from .agent_listener import AgentListener, agent_app
from .app import create_app
from .auth import TokenAuthenticator
from .bootstrap_api import bootstrap_router
from .common import ServerState, build_state, uvicorn_options
from .controllers import ControllerProcess, controller_mode
from .enroll_api import enroll_router
from .otlp import OTLPExporter
from .telemetry import TelemetryPlane

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8740"


def default_data_dir() -> Path:
    env = os.environ.get("DPUFLEET_DATA_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "dpufleet"


def parse_listen(listen: str) -> tuple[str, int]:
    try:
        return host_port(listen, default_host="127.0.0.1")
    except ValueError:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, for example 127.0.0.1:8740") from None


@dataclass
class Server:
    """Everything one server process holds; the CLI, the demo and the tests build it the same way."""

    data_dir: Path
    store: Store
    state: ServerState
    app: FastAPI
    ca: FleetCA
    enrollment: EnrollmentAuthority
    agent_listener: AgentListener

    @property
    def services(self) -> Services:
        return self.state.services

    @classmethod
    def build(
        cls,
        data_dir: Path,
        db_url: str | None = None,
        *,
        controllers: bool = True,
        agent_listen: str = "127.0.0.1:0",
        agent_advertise: str | None = None,
        telemetry_bus: str | None = None,
        otlp_endpoint: str | None = None,
        otlp_headers: dict[str, str] | None = None,
    ) -> Server:
        """`agent_listen` defaults to any free loopback port; `dpufleet server` passes 127.0.0.1:8741.
        `telemetry_bus`: "embedded" runs nats-server as this server's child, a nats:// URL reaches an
        operator's bus, None (the tests' default) runs no telemetry. `otlp_endpoint`: the aggregator also
        pushes what it takes in to this OTLP/HTTP collector (with `otlp_headers` on each request)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        store = Store.open(db_url or default_sqlite_url(data_dir), SecretBox.load_or_create(data_dir))
        services = Services(store, ImageRepository(data_dir / "images"))
        oidc_config = OIDCConfig.load(data_dir)
        auth = TokenAuthenticator(data_dir, store, OIDCVerifier(oidc_config) if oidc_config else None)
        state = build_state(store, auth, services)
        if telemetry_bus is not None:
            exporter = OTLPExporter(otlp_endpoint, otlp_headers) if otlp_endpoint else None
            state.telemetry = TelemetryPlane(
                store, data_dir / "telemetry", None if telemetry_bus == "embedded" else telemetry_bus, exporter,
                feed=state.feed, sessions=services.sessions, inbox=services.inbox,
            )  # fmt: skip
            state.telemetry.register_metrics(state.registry)
            state.background.append(state.telemetry.run)
        ca = FleetCA.load_or_create(data_dir)
        enrollment = EnrollmentAuthority(ca, audit=AuditLog(store))
        host, port = parse_listen(agent_listen)
        listener = AgentListener.bind(
            host,
            port,
            agent_app(
                state,
                ReportHandler(
                    store,
                    resolver=ProjectResolver(store, enrollment.tokens.project_of),
                    telemetry=state.telemetry.assignment if state.telemetry is not None else None,
                ),
                enrollment,
            ),
            ca,
            agent_advertise,
        )
        state.background.append(listener.run)
        if controllers:
            from ..plane import default_manager

            manager = default_manager(services, state.feed)
            state.background.append(manager.run)
        app = create_app(state)
        app.include_router(enroll_router(state, enrollment, lambda: listener.url))
        onboarding_key = OnboardingKey.load_or_create(data_dir / "bootstrap")
        app.include_router(bootstrap_router(state, enrollment, onboarding_key, lambda: listener.url))
        return cls(data_dir, store, state, app, ca, enrollment, listener)


def serve(
    data_dir: Path,
    db_url: str | None,
    listen: str,
    *,
    controllers: bool | str = "process",
    agent_listen: str = "127.0.0.1:0",
    agent_advertise: str | None = None,
    telemetry_bus: str | None = "embedded",
    otlp_endpoint: str | None = None,
    otlp_headers: dict[str, str] | None = None,
) -> None:
    """`dpufleet server`. `controllers`: "process" (the default, and True) runs them as a supervised
    child process (server/controllers.py), "in-process" in this process, "none" (and False) not at all."""
    mode = controller_mode(controllers)
    host, port = parse_listen(listen)
    server = Server.build(
        data_dir,
        db_url,
        controllers=mode == "in-process",
        agent_listen=agent_listen,
        agent_advertise=agent_advertise,
        telemetry_bus=telemetry_bus,
        otlp_endpoint=otlp_endpoint,
        otlp_headers=otlp_headers,
    )
    log.info("dpufleet API on http://%s:%d (data dir %s)", host, port, data_dir)
    repository = server.services.repository
    advertise_repository(repository, host, port)
    if mode == "process":
        child = ControllerProcess(
            data_dir, db_url, server.services.inbox, lambda: repository.public_url if repository else None
        )
        server.state.background.append(child.run)
        server.state.more_metrics = child.metrics_text
        child.register_metrics(server.state.registry)
        server.state.controllers_status = child.status
    log.info("agent listener (mTLS) on %s; fleet CA %s", server.agent_listener.url, server.ca.fingerprint)
    log.info("admin token: %s", server.state.auth.admin_token_path)
    log.info("controllers: %s", {"process": "a child process", "in-process": "in this process", "none": "none"}[mode])
    tune_gc()
    try:
        uvicorn.run(server.app, host=host, port=port, log_level="warning", access_log=False, **uvicorn_options())
    finally:
        server.agent_listener.close()
        server.store.close()
