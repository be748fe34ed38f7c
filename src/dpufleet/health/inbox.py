"""Redfish events the BMCs pushed to the API server (EventService subscriptions), kept per BMC.

In-process and bounded: the receiver (server/health_api.py) adds, the health controller reads
them as log evidence on its next visit. A controller in another process does not see them;
it still has the BMC's LogServices, which hold the same entries.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime

from .evidence import LogEntry

KEPT_PER_BMC = 100
_lock = threading.Lock()
_events: dict[tuple[str, str], deque[LogEntry]] = {}


def add(
    project: str, bmc: str, message: str, message_id: str = "", severity: str = "", created: datetime | None = None
) -> None:
    entry = LogEntry(created or datetime.now(UTC), message, message_id, severity, "redfish-event")
    with _lock:
        _events.setdefault((project, bmc), deque(maxlen=KEPT_PER_BMC)).append(entry)


def recent(project: str, bmc: str) -> list[LogEntry]:
    with _lock:
        return list(_events.get((project, bmc), ()))
