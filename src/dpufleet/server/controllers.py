"""The controllers as a child process of the API server (`dpufleet server`, the default).

The API server and the controllers are both busy Python: in one process they share one core. By
default `serve()` runs the controllers as `dpufleet controller` in a child process of its own
(`ControllerProcess`, one of the server's background tasks), on the same data dir and database:

- the change feed already crosses processes (the child follows the change log; the server's
  writes reach it within the feed's poll interval, 250 ms);
- the pushed Redfish events the server's receiver takes are relayed to the child, one JSON line a
  event on its stdin (drivers/redfish/relay.py; best effort, never blocking the server);
- the child is told the server's public URL (`--public-url`), so the image URLs it hands BMCs
  and the event subscriptions it makes point to this server;
- its controller metrics (reconciles, provisioning, health) are part of the server's /metrics: the
  server asks the child for them on a Unix socket at each scrape and adds them to its own; a child
  too busy to answer within 2 s gets its last answer served again (for up to 5 minutes, its age in
  `dpufleet_controller_metrics_age_seconds`) rather than a scrape without its families;
- the server's own metrics of the child: its restarts and the relayed and dropped events
  (`register_metrics`);
- supervised: a child that exits is started again after 1 s, doubling to 30 s while it keeps
  exiting (back to 1 s once it ran for a minute), with a log line each time; stopped with the
  server (SIGTERM, SIGKILL after 10 s). A server killed outright takes the child with it (the
  child asks the kernel for SIGKILL when its parent dies, and stops when its stdin closes).

Its stdout and stderr are the server's. `--controllers in-process` keeps today's single process
(`Server.build(controllers=True)`, which the tests use), `--controllers none` runs none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..drivers.redfish.events import Inbox
from ..drivers.redfish.relay import EventRelay

log = logging.getLogger(__name__)

STALE_METRICS_SECONDS = 300.0  # how long a busy child's last metrics are served again

ControllerMode = Literal["process", "in-process", "none"]
CONTROLLER_MODES: tuple[ControllerMode, ...] = ("process", "in-process", "none")


def controller_mode(value: bool | str) -> ControllerMode:
    """True is the default (a child process), False none; or one of CONTROLLER_MODES by name."""
    if value is True:
        return "process"
    if value is False:
        return "none"
    for mode in CONTROLLER_MODES:
        if value == mode:
            return mode
    raise ValueError(f"controllers {value!r}: expected one of {', '.join(CONTROLLER_MODES)}")


class ControllerProcess:
    """Runs, relays events to, restarts and stops the `dpufleet controller` child."""

    def __init__(
        self,
        data_dir: Path,
        db_url: str | None,
        inbox: Inbox,
        public_url: Callable[[], str | None] = lambda: None,
        *,
        first_backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_seconds: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.public_url = public_url
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.stable_seconds = stable_seconds
        self.stop_timeout = stop_timeout
        self.relay = EventRelay()
        inbox.forward(self.relay.send)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # the socket the child answers its metrics on (`run`): in the data dir, or in a private
        # temporary directory (0700) when the data dir's path is too long for a Unix socket
        self.metrics_socket: Path | None = None
        self._last_metrics: tuple[float, str] | None = None  # (monotonic time, text) of the last answer

    def status(self) -> str:
        """For /readyz: "running" once the child serves (its metrics socket is there), else "starting"."""
        proc = self.process
        socket = self.metrics_socket
        running = proc is not None and proc.poll() is None and socket is not None and socket.exists()
        return "running" if running else "starting"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "dpufleet.main", "controller", "--data-dir", str(self.data_dir)]
        url = self.public_url()
        if url:
            cmd += ["--public-url", url]
        if self.metrics_socket is not None:
            cmd += ["--metrics-socket", str(self.metrics_socket)]
        return [*cmd, "--events-from-stdin"]

    async def metrics_text(self, timeout: float = 2.0) -> str:
        """The child's controller metrics (Prometheus text). A child that does not answer in `timeout`
        (busy) gets its last answer served again, up to STALE_METRICS_SECONDS old; "" when it is not
        running (restarting) or has not answered for longer."""
        if self.process is None or self.process.poll() is not None or self.metrics_socket is None:
            self._last_metrics = None
            return ""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(self.metrics_socket))
                try:
                    text = (await reader.read()).decode()
                finally:
                    writer.close()
        except (OSError, TimeoutError, UnicodeDecodeError):
            last = self._last_metrics
            if last is not None and time.monotonic() - last[0] <= STALE_METRICS_SECONDS:
                return last[1]
            return ""
        self._last_metrics = (time.monotonic(), text)
        return text

    def metrics_age(self) -> float | None:
        """Seconds since the child last answered a scrape (None: not since it started)."""
        last = self._last_metrics
        return None if last is None else time.monotonic() - last[0]

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The server's metrics of its child: restarts, relayed and dropped events, metrics age."""
        registry.register(_ChildCollector(self))

    def environment(self) -> dict[str, str]:
        """The server's environment; the database URL in it, not in the command line (`ps` shows that)."""
        env = dict(os.environ)
        env.pop("DPUFLEET_DB", None)
        if self.db_url:
            env["DPUFLEET_DB"] = self.db_url
        return env

    async def run(self) -> None:
        """Until cancelled (the server stopping): start the child, wait for it, start it again."""
        backoff = self.first_backoff
        socket = self.data_dir / "controllers.sock"  # the data dir is 0700
        socket_dir: Path | None = None
        if len(str(socket).encode()) > 100:  # a Unix socket's path is at most 108 bytes
            socket_dir = Path(tempfile.mkdtemp(prefix="dpufleet-controllers-"))
            socket = socket_dir / "metrics.sock"
        self.metrics_socket = socket
        try:
            while True:
                socket.unlink(missing_ok=True)  # made again by the child once it runs
                started = time.monotonic()
                try:
                    # Popen, not asyncio's subprocess: the same on uvloop; its own process group, so a
                    # Ctrl-C at the terminal reaches the server only, which then stops the child
                    proc = subprocess.Popen(
                        self.command(), stdin=subprocess.PIPE, env=self.environment(), process_group=0
                    )
                except OSError as exc:
                    log.error("cannot start the controller process: %s; trying again in %.0f s", exc, backoff)
                else:
                    self.process = proc
                    self.starts += 1
                    log.info("controllers running in process %d", proc.pid)
                    assert proc.stdin is not None
                    try:
                        await self.relay.attach(proc.stdin)
                    except OSError:
                        log.exception("cannot relay events to the controller process %d", proc.pid)
                    code = await self._exited(proc)
                    self.relay.detach()
                    if time.monotonic() - started >= self.stable_seconds:
                        backoff = self.first_backoff
                    log.warning(
                        "the controller process %d exited (%s); starting it again in %.0f s",
                        proc.pid,
                        f"code {code}" if code >= 0 else f"signal {-code}",
                        backoff,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            try:
                await self.stop()
            finally:
                socket.unlink(missing_ok=True)
                if socket_dir is not None:
                    shutil.rmtree(socket_dir, ignore_errors=True)

    @staticmethod
    async def _exited(proc: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        """Its exit code once it exited (polled: no thread waits on it); TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := proc.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.1)
        return code

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout` seconds."""
        self.relay.detach()
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await self._exited(proc, self.stop_timeout)
        except TimeoutError:
            log.warning("the controller process %d did not stop in %.0f s: killing it", proc.pid, self.stop_timeout)
            proc.kill()
            proc.wait()
        except asyncio.CancelledError:
            proc.kill()
            raise
        log.info("controller process %d stopped", proc.pid)


class _ChildCollector(Collector):
    """Read at each scrape from the ControllerProcess (its counters are the source of truth)."""

    def __init__(self, child: ControllerProcess) -> None:
        self.child = child

    def collect(self) -> Iterator[Metric]:
        child = self.child
        yield CounterMetricFamily(
            "dpufleet_controller_process_restarts",
            "Times the controller process was started again after it exited",
            value=max(0, child.starts - 1),
        )
        yield CounterMetricFamily(
            "dpufleet_event_relay_sent",
            "Pushed Redfish events relayed to the controller process",
            value=child.relay.sent,
        )
        yield CounterMetricFamily(
            "dpufleet_event_relay_dropped",
            "Pushed Redfish events dropped (the controller process was restarting or not reading)",
            value=child.relay.dropped,
        )
        age = child.metrics_age()
        if age is not None:
            yield GaugeMetricFamily(
                "dpufleet_controller_metrics_age_seconds",
                "Age of the controller process's metrics in this scrape (about 0 when it answered)",
                value=age,
            )
