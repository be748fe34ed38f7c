"""The fleet bus: a NATS server (Debian's nats-server) the API server runs as its child on 127.0.0.1, or an
operator's own reached by URL.

Authentication is per DPU: each DPU's user name and password are derived from its agent identity (its
serial and project) with a secret kept in the data dir, and handed to the agent in its report reply over
mTLS. Each DPU user may publish only under ``dpufleet.tm.<project>.<serial>.>`` and subscribe to nothing;
the aggregator's own user may subscribe under ``dpufleet.tm.>`` and publish only to JetStream's API. A DPU
seen for the first time is added to the configuration, which nats-server re-reads on SIGHUP.

What must not be lost (the events and usage classes) is also kept in a JetStream stream, which the
aggregator reads through a durable consumer: batches published while it is away are taken in when it is
back. For an operator's own bus, the same list of users is written to ``authorization.conf`` in the bus
directory, for that bus's configuration to include.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import hmac
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..api.telemetry import SUBJECT_ROOT, BusAccess, TelemetryClass

log = logging.getLogger(__name__)
AGGREGATOR_USER = "dpufleet-aggregator"
DURABLE_CLASSES = (TelemetryClass.EVENTS, TelemetryClass.USAGE)  # kept in JetStream until the aggregator has them
STREAM = "DPUFLEET_TELEMETRY"
CONSUMER = "dpufleet-aggregator"
STREAM_MAX_BYTES = 1024 * 1024 * 1024  # the stream's cap on disk; the oldest go first past it
STREAM_MAX_AGE_SECONDS = 7 * 24 * 3600
AUTHORIZATION_FILE = "authorization.conf"


def bus_users(
    credentials: BusCredentials, dpus: dict[str, str], aggregator: tuple[str, str]
) -> list[dict[str, object]]:
    """nats-server's users: the aggregator (``aggregator``: its user and password), which may subscribe under
    the telemetry subjects and use JetStream's API, and each DPU (serial -> project), which may publish only
    under its own subjects and subscribe to nothing."""
    user, password = aggregator
    users: list[dict[str, object]] = [
        {
            "user": user,
            "password": password,
            "permissions": {
                "publish": {"allow": ["$JS.API.>", "$JS.ACK.>"]},
                "subscribe": {"allow": [f"{SUBJECT_ROOT}.>", "_INBOX.>"]},
            },
        }
    ]
    for serial, project in sorted(dpus.items()):
        users.append(
            {
                "user": credentials.dpu_user(serial),
                "password": credentials.dpu_password(project, serial),
                "permissions": {
                    "publish": {"allow": [f"{SUBJECT_ROOT}.{project}.{serial}.>"]},
                    "subscribe": {"deny": [">"]},
                },
            }
        )
    return users


def _write_private(path: Path, text: str) -> None:
    """The file replaced at once (never half written), readable by its owner only: it holds passwords."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass
class AuthorizationFile:
    """For an operator's own bus: the users it should know (the aggregator and each DPU asking for telemetry),
    kept in ``authorization.conf`` as the DPU objects change. The bus's configuration includes the file
    (``include /var/lib/dpufleet/telemetry/bus/authorization.conf``) and is reloaded when it changes."""

    directory: Path
    credentials: BusCredentials
    aggregator: tuple[str, str]
    writes: int = 0
    _dpus: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> Path:
        return self.directory / AUTHORIZATION_FILE

    @property
    def authorized(self) -> dict[str, str]:
        with self._lock:
            return dict(self._dpus)

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        with self._lock:
            users = bus_users(self.credentials, self._dpus, self.aggregator)
            # nats-server's configuration format accepts JSON values
            _write_private(self.path, "authorization: " + json.dumps({"users": users}, indent=1) + "\n")
            self.writes += 1

    def allow(self, project: str, serial: str) -> None:
        self.authorize({serial: project})

    def authorize(self, dpus: dict[str, str]) -> None:
        with self._lock:
            changed = {serial: project for serial, project in dpus.items() if self._dpus.get(serial) != project}
            self._dpus.update(changed)
        if changed:
            self.write()

    def revoke(self, serial: str) -> None:
        with self._lock:
            gone = self._dpus.pop(serial, None) is not None
        if gone:
            self.write()


def _secret(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


@dataclass
class BusCredentials:
    """Per-DPU credentials derived from the agent identity (nothing per DPU is stored)."""

    secret: bytes

    @classmethod
    def load_or_create(cls, directory: Path) -> BusCredentials:
        return cls(_secret(directory / "bus-secret"))

    def dpu_user(self, serial: str) -> str:
        return f"dpu-{serial}"

    def dpu_password(self, project: str, serial: str) -> str:
        return hmac.new(self.secret, f"dpu/{project}/{serial}".encode(), hashlib.sha256).hexdigest()

    def aggregator_password(self) -> str:
        return hmac.new(self.secret, AGGREGATOR_USER.encode(), hashlib.sha256).hexdigest()

    def access(self, url: str, project: str, serial: str) -> BusAccess:
        return BusAccess(
            url=url,
            user=self.dpu_user(serial),
            password=self.dpu_password(project, serial),
            subjectPrefix=f"{SUBJECT_ROOT}.{project}.{serial}",
        )


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs nats-server when the thread that started it (the API
    server's event loop) dies, so a SIGKILLed server leaves no bus behind; and it may hold as many open
    files as the system lets it (a connection per DPU: the usual soft limit of 1,024 is not a fleet)."""
    with contextlib.suppress(OSError, ValueError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedBus:
    """nats-server as a child process, its configuration rewritten (and reloaded) as DPUs appear."""

    directory: Path
    credentials: BusCredentials
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    reloads_sent: int = 0
    reload_timeout: float = 10.0
    _dpus: dict[str, str] = field(default_factory=dict)  # serial -> project
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # authorization generations: wanted grows with each change, applied follows once nats-server says so
    _changed: threading.Condition = field(init=False)
    _wanted: int = 0
    _applied: int = 0
    _reloader: threading.Thread | None = None
    _stopping: bool = False
    _log_offset: int = 0
    _log_seen: int = 0

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def aggregator_url(self) -> str:
        return f"nats://{AGGREGATOR_USER}:{self.credentials.aggregator_password()}@{self.host}:{self.port}"

    def _config(self) -> str:
        users = bus_users(self.credentials, self._dpus, (AGGREGATOR_USER, self.credentials.aggregator_password()))
        # nats-server's configuration format accepts JSON
        body = {
            "host": self.host,
            "port": self.port,
            "max_payload": 4 * 1024 * 1024,
            # what nats-server holds for a client that reads slower than the fleet publishes before it cuts it
            # off as a slow consumer (default 64 MiB): the aggregator's own queue holds as much again
            "max_pending": 256 * 1024 * 1024,
            "write_deadline": "10s",
            "pid_file": str(self.directory / "nats.pid"),
            "jetstream": {"store_dir": str(self.directory / "jetstream"), "max_file_store": 2 * STREAM_MAX_BYTES},
            "authorization": {"users": users},
        }
        return json.dumps(body, indent=1)

    def _write(self) -> None:
        _write_private(self.directory / "nats.conf", self._config())

    def start(self) -> None:
        binary = shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
        )
        if binary is None:
            raise RuntimeError(
                "the telemetry bus needs nats-server (Debian package nats-server), or --telemetry-bus URL"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if not self.port:
            self.port = free_port(self.host)
        self._write()
        log_file = open(self.directory / "nats.log", "ab")  # noqa: SIM115 - the child's stderr for its life
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.directory / "nats.conf")], stdout=log_file, stderr=log_file,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )  # fmt: skip
        log_file.close()
        with self._lock:
            self._applied = self._wanted  # the configuration it starts with holds every change so far
            self._stopping = False
        self._reloader = threading.Thread(target=self._reload_loop, name="telemetry-bus-reload", daemon=True)
        self._reloader.start()
        log.info("telemetry bus (nats-server, pid %d) on %s", self.proc.pid, self.url)

    async def ready(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.directory / "nats.log").read_text()[-500:]
                raise RuntimeError(f"nats-server exited with status {self.proc.returncode}: {tail}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                return
            except OSError:
                if loop.time() > deadline:
                    raise RuntimeError(f"nats-server did not listen on {self.url} within {timeout:.0f} s") from None
                await asyncio.sleep(0.05)

    @property
    def authorized(self) -> dict[str, str]:
        """serial -> the project whose subjects it may publish under (as last sent to nats-server: see
        ``wait_applied``)."""
        with self._lock:
            return dict(self._dpus)

    def allow(self, project: str, serial: str) -> None:
        """Let this DPU publish under its own subjects (a reload when it is new or moved project)."""
        self.authorize({serial: project})

    def authorize(self, dpus: dict[str, str]) -> None:
        """Let each of these DPUs (serial -> project) publish under its own subjects: one reload for them all."""
        with self._lock:
            changed = {serial: project for serial, project in dpus.items() if self._dpus.get(serial) != project}
            if not changed:
                return
            self._dpus.update(changed)
            self._change()

    def revoke(self, serial: str) -> None:
        """This DPU may publish no more (it was deleted); its open connection is closed by the reload."""
        with self._lock:
            if self._dpus.pop(serial, None) is not None:
                self._change()

    def _change(self) -> None:
        """Under the lock: the authorization changed. Before the server runs, the file is all there is; after,
        the reloader writes and signals, one reload at a time."""
        self._wanted += 1
        if self._reloader is None:
            self._write()
            self._applied = self._wanted
        self._changed.notify_all()

    def _reload_loop(self) -> None:
        """Reload nats-server one change set at a time: a SIGHUP sent while it is still reloading may be lost
        (signals coalesce), so the next is sent only once it has logged the last as applied. Changes that
        arrive meanwhile are written together in the next."""
        while True:
            with self._lock:
                while not self._stopping and self._applied >= self._wanted:
                    self._changed.wait()
                if self._stopping:
                    return
                generation = self._wanted
                self._write()
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return
            before = self._scan_log()
            os.kill(proc.pid, signal.SIGHUP)
            self.reloads_sent += 1
            deadline = time.monotonic() + self.reload_timeout
            while self._scan_log() <= before:
                if self._stopping or proc.poll() is not None:
                    return
                if time.monotonic() > deadline:
                    log.warning("nats-server did not apply its new authorization within %.0f s; sending it again",
                                self.reload_timeout)  # fmt: skip
                    break
                time.sleep(0.01)
            else:
                with self._lock:
                    self._applied = max(self._applied, generation)
                    self._changed.notify_all()

    def _scan_log(self) -> int:
        """How many reloads nats-server has logged as done so far (the log is read on from where it was)."""
        marker = b"Reloaded server configuration"
        try:
            with open(self.directory / "nats.log", "rb") as fh:
                fh.seek(max(0, self._log_offset - len(marker)))
                chunk = fh.read()
        except OSError:
            return self._log_seen
        start = max(0, self._log_offset - len(marker))
        # count only markers that end past what was counted before
        skip = self._log_offset - start
        count = 0
        at = chunk.find(marker)
        while at >= 0:
            if at + len(marker) > skip:
                count += 1
            at = chunk.find(marker, at + 1)
        self._log_seen += count
        self._log_offset = start + len(chunk)
        return self._log_seen

    @property
    def reloads_pending(self) -> bool:
        """Whether a change of authorization is still to be applied by nats-server."""
        with self._lock:
            return self._applied < self._wanted

    def wait_applied(self, timeout: float = 10.0) -> None:
        """Until nats-server has applied every change of authorization made before this call."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._wanted
            while self._applied < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"nats-server did not apply its new authorization within {timeout:.0f} s")
                self._changed.wait(left)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
        reloader, self._reloader = self._reloader, None
        if reloader is not None:
            reloader.join(5)
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
