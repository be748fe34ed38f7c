"""The relay of pushed Redfish events from the API server to its controller process: what the server's
inbox takes reaches the child's inbox whole, added on the child's event loop; a child that does not
read costs the server nothing but dropped events, counted."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import UTC, datetime

from dpufleet.drivers.redfish.events import Inbox
from dpufleet.drivers.redfish.relay import EventRelay, decode_event, encode_event, relay_into


def test_events_added_to_the_server_inbox_reach_the_child_inbox_on_its_loop() -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        read_fd, write_fd = os.pipe()
        server_inbox, child_inbox = Inbox(), Inbox()
        relay = EventRelay()
        server_inbox.forward(relay.send)
        await relay.attach(os.fdopen(write_fd, "wb", buffering=0))

        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        woken: list[tuple[str, str, str, int]] = []
        child_inbox.listen(lambda p, b, mid, _sev: woken.append((p, b, mid, threading.get_ident())))
        receiving = asyncio.create_task(relay_into(reader, child_inbox))

        at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
        server_inbox.add("default", "bmc-1", "The update finished.", "Update.1.0.UpdateSuccessful", "OK", at)
        server_inbox.add("lab", "bmc-2", "Powered on", "ResourceEvent.1.0.ResourcePoweredOn", "OK", at)
        # from another thread too (the relay hands the write to its loop)
        await asyncio.to_thread(server_inbox.add, "lab", "bmc-2", "From a thread", "X.1.0.Y", "Warning", at)
        deadline = time.monotonic() + 5
        while len(woken) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

        assert [w[:3] for w in woken] == [
            ("default", "bmc-1", "Update.1.0.UpdateSuccessful"),
            ("lab", "bmc-2", "ResourceEvent.1.0.ResourcePoweredOn"),
            ("lab", "bmc-2", "X.1.0.Y"),
        ]
        assert {w[3] for w in woken} == {loop_thread}, "the child's listeners run on its event loop"
        entry = child_inbox.recent("default", "bmc-1")[0]
        assert (entry.message, entry.message_id, entry.severity, entry.created, entry.source) == (
            "The update finished.",
            "Update.1.0.UpdateSuccessful",
            "OK",
            at,
            "redfish-event",
        )
        assert relay.sent == 3 and relay.dropped == 0

        relay.detach()  # the server stops relaying: the child sees EOF and its reader ends
        assert await asyncio.wait_for(receiving, 5) == 3
        server_inbox.add("default", "bmc-1", "while no child", "Update.1.0.UpdateSuccessful")
        assert relay.dropped == 1  # no child: dropped, counted
        transport.close()

    asyncio.run(main())


def test_a_child_that_does_not_read_never_blocks_the_server() -> None:
    async def main() -> None:
        read_fd, write_fd = os.pipe()  # nobody reads read_fd
        inbox = Inbox()
        relay = EventRelay(limit=16 * 1024)
        inbox.forward(relay.send)
        await relay.attach(os.fdopen(write_fd, "wb", buffering=0))
        started = time.monotonic()
        for n in range(5000):  # ~1 MB of events: the pipe (64 KiB) and the relay's buffer fill up
            inbox.add("default", f"bmc-{n % 7}", "x" * 150, "Update.1.0.UpdateSuccessful", "OK")
        assert time.monotonic() - started < 5
        assert relay.dropped > 0 and relay.sent + relay.dropped == 5000
        assert len(inbox.recent("default", "bmc-0")) > 0  # the server's own inbox keeps them
        relay.detach()
        os.close(read_fd)

    asyncio.run(main())


def test_a_relayed_line_is_one_json_object() -> None:
    inbox = Inbox()
    lines: list[bytes] = []
    inbox.forward(lambda p, b, e: lines.append(encode_event(p, b, e)))
    inbox.add("p", "b", "multi\nline", "M.1.0.Id", "Critical", None)
    assert len(lines) == 1 and lines[0].count(b"\n") == 1 and lines[0].endswith(b"\n")
    project, bmc, message, message_id, severity, created = decode_event(lines[0])
    assert (project, bmc, message, message_id, severity) == ("p", "b", "multi\nline", "M.1.0.Id", "Critical")
    assert created is not None  # the time it was added in the server
