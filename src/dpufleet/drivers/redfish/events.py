"""Redfish events the BMCs pushed to the API server (EventService subscriptions), kept per BMC;
and the log entries (LogServices) they read like.

In-process and bounded, one inbox per control plane (made by plane.Services, so two control
planes in one process, as in tests, never read each other's events): the receiver
(server/health_api.py) adds, the health controller reads them as log evidence on its next visit.
When the controllers run as the API server's child process (the default of `dpufleet server`),
the server forwards each event it receives to the child's inbox (drivers/redfish/relay.py). A
controller run on its own (`dpufleet controller` beside `dpufleet server --controllers none`) does
not see them; it still has the BMC's LogServices, which hold the same entries, and polls.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class LogEntry:
    """A Redfish LogServices entry (or a pushed Redfish event)."""

    created: datetime | None
    message: str
    message_id: str = ""
    severity: str = ""
    source: str = "redfish-log"  # or redfish-event


KEPT_PER_BMC = 100


class Inbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[tuple[str, str], deque[LogEntry]] = {}
        self._listeners: list[Callable[[str, str, str, str], None]] = []
        self._forwarders: list[Callable[[str, str, LogEntry], None]] = []

    def listen(self, callback: Callable[[str, str, str, str], None]) -> None:
        """Call `callback(project, bmc, message_id, severity)` after every event added (in the adding
        thread; keep it short)."""
        self._listeners.append(callback)

    def forward(self, callback: Callable[[str, str, LogEntry], None]) -> None:
        """Call `callback(project, bmc, entry)` with every event added, whole (the relay to a
        controller process); in the adding thread, before the listeners."""
        self._forwarders.append(callback)

    def add(
        self,
        project: str,
        bmc: str,
        message: str,
        message_id: str = "",
        severity: str = "",
        created: datetime | None = None,
    ) -> None:
        entry = LogEntry(created or datetime.now(UTC), message, message_id, severity, "redfish-event")
        with self._lock:
            self._events.setdefault((project, bmc), deque(maxlen=KEPT_PER_BMC)).append(entry)
        for forward in list(self._forwarders):
            forward(project, bmc, entry)
        for callback in list(self._listeners):
            callback(project, bmc, message_id, severity)

    def recent(self, project: str, bmc: str) -> list[LogEntry]:
        with self._lock:
            return list(self._events.get((project, bmc), ()))

    def forget(self, project: str, bmc: str) -> None:
        """A BMC deleted (or subscribed afresh): what it sent before is not evidence about what comes next."""
        with self._lock:
            self._events.pop((project, bmc), None)
