"""The relay of pushed Redfish events from the API server to its controller process.

BMCs push their events to the API server (server/health_api.py puts them in its `Inbox`); the
controllers that act on them (the provisioner wakes a DPU on UpdateSuccessful, the health
controller reads them as evidence) run in a child process of the server by default. The server
forwards every event it receives to the child as one JSON line on the child's stdin
(`EventRelay`, an `Inbox.forward` callback), and the child adds each line to its own inbox on its
event loop (`relay_into`), so the listeners run on the loop as they do in one process.

Best effort, by design: the relay never blocks the API server. Lines wait in the pipe's
transport buffer up to `limit` bytes; beyond that (a child that stopped reading), and while there
is no child (it is being restarted), events are dropped and counted (`dropped`) with a log line.
A dropped event costs a wait: provisioning polls its BMCs anyway, and the health controller
reads the BMC's LogServices, which hold the same entries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from datetime import datetime
from typing import Any

import orjson

from .events import Inbox, LogEntry

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1024 * 1024  # bytes waiting for the child before events are dropped
MAX_MESSAGE = 8192  # characters of one event's message relayed (a BMC's messages are a line or two)
MAX_LINE = 64 * 1024


def encode_event(project: str, bmc: str, entry: LogEntry) -> bytes:
    """One relayed event: a JSON object on one line."""
    return (
        orjson.dumps(
            {
                "project": project,
                "bmc": bmc,
                "message": entry.message[:MAX_MESSAGE],
                "message_id": entry.message_id,
                "severity": entry.severity,
                "created": entry.created.isoformat() if entry.created else None,
            }
        )
        + b"\n"
    )


def decode_event(line: bytes) -> tuple[str, str, str, str, str, datetime | None]:
    """(project, bmc, message, message_id, severity, created) of a relayed line; ValueError if it is not one."""
    doc: Any = orjson.loads(line)
    if not isinstance(doc, dict) or not isinstance(doc.get("project"), str) or not isinstance(doc.get("bmc"), str):
        raise ValueError("not a relayed event")
    created = doc.get("created")
    return (
        doc["project"],
        doc["bmc"],
        str(doc.get("message") or ""),
        str(doc.get("message_id") or ""),
        str(doc.get("severity") or ""),
        datetime.fromisoformat(created) if isinstance(created, str) else None,
    )


class _Pipe(asyncio.BaseProtocol):
    def __init__(self, relay: EventRelay) -> None:
        self.relay = relay

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._lost(self)


class EventRelay:
    """The server's end: `send` (an `Inbox.forward` callback) writes each event to the attached pipe."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.sent = 0
        self.dropped = 0
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _Pipe | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    async def attach(self, pipe: Any) -> None:
        """Relay to `pipe` (a writable file object: the child's stdin) from now on, on the running loop."""
        self.detach()
        loop = asyncio.get_running_loop()
        os.set_blocking(pipe.fileno(), False)
        protocol = _Pipe(self)
        transport, _ = await loop.connect_write_pipe(lambda: protocol, pipe)
        self._transport, self._protocol = transport, protocol
        self._loop, self._thread = loop, threading.get_ident()

    def detach(self) -> None:
        """Stop relaying (the child exited); what was still buffered is lost."""
        transport, self._transport, self._protocol = self._transport, None, None
        if transport is not None:
            transport.abort()

    def _lost(self, protocol: _Pipe) -> None:
        if protocol is self._protocol:
            self._transport, self._protocol = None, None

    def send(self, project: str, bmc: str, entry: LogEntry) -> None:
        """Never blocks: the event is written to the pipe's buffer, or dropped and counted."""
        line = encode_event(project, bmc, entry)
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._write, line)
            return
        self._write(line)

    def _write(self, line: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._drop("no controller process to relay it to (starting or restarting)")
            return
        if transport.get_write_buffer_size() + len(line) > self.limit:
            self._drop(f"the controller process is not reading ({self.limit} bytes waiting)")
            return
        transport.write(line)
        self.sent += 1

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "pushed Redfish event not relayed to the controllers: %s; %d dropped so far "
                "(provisioning and health fall back to polling the BMC)",
                why,
                self.dropped,
            )


async def relay_into(reader: asyncio.StreamReader, inbox: Inbox) -> int:
    """The child's end: add every relayed line to `inbox` (on this loop) until EOF; the count added."""
    added = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line over the reader's limit: skipped (asyncio dropped it)
            log.warning("relayed event over %d bytes skipped", MAX_LINE)
            continue
        if not line:
            return added
        if not line.strip():
            continue
        try:
            project, bmc, message, message_id, severity, created = decode_event(line)
        except ValueError as exc:
            log.warning("relayed event not understood (%s): %.200r", exc, line)
            continue
        inbox.add(project, bmc, message, message_id, severity, created)
        added += 1


async def stdin_reader() -> asyncio.StreamReader:
    """This process's stdin as a StreamReader on the running loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader
