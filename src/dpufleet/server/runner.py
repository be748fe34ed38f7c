"""Starting the API server: data dir, store, bootstrap token, in-process controllers, uvicorn."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from ..security.secrets import SecretBox
from ..store.store import Store, default_sqlite_url
from .app import ServerState, build_state, create_app
from .auth import TokenAuthenticator

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8740"


def default_data_dir() -> Path:
    env = os.environ.get("DPUFLEET_DATA_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "dpufleet"


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, for example 127.0.0.1:8740")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class Server:
    """Everything one server process holds; the CLI, the demo and the tests build it the same way."""

    data_dir: Path
    store: Store
    state: ServerState
    app: FastAPI

    @classmethod
    def build(cls, data_dir: Path, db_url: str | None = None, *, controllers: bool = True) -> Server:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        store = Store.open(db_url or default_sqlite_url(data_dir), SecretBox.load_or_create(data_dir))
        auth = TokenAuthenticator(data_dir)
        state = build_state(store, auth)
        if controllers:
            from ..controllers.manager import default_manager

            manager = default_manager(store, state.feed)
            state.background.append(manager.run)
        return cls(data_dir, store, state, create_app(state))


def serve(data_dir: Path, db_url: str | None, listen: str, *, controllers: bool = True) -> None:
    host, port = parse_listen(listen)
    server = Server.build(data_dir, db_url, controllers=controllers)
    log.info("dpufleet API on http://%s:%d (data dir %s)", host, port, data_dir)
    log.info("admin token: %s", server.state.auth.admin_token_path)
    try:
        uvicorn.run(server.app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        server.store.close()
