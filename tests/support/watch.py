"""Reading an NDJSON watch stream with bounded waits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx


class WatchStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def next_event(self) -> dict[str, Any]:
        """The next event, bookmarks included (httpx's read timeout bounds the wait)."""
        while True:
            line = next(self._lines)
            if line.strip():
                event: dict[str, Any] = json.loads(line)
                return event

    def take(self, count: int, *, bookmarks: bool = False) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while len(events) < count:
            event = self.next_event()
            if bookmarks or event["type"] != "BOOKMARK":
                events.append(event)
        return events


@contextmanager
def watch(client: httpx.Client, path: str, read_timeout: float = 5.0, **params: str) -> Iterator[WatchStream]:
    timeout = httpx.Timeout(5.0, read=read_timeout)
    with client.stream("GET", path, params={"watch": "true", **params}, timeout=timeout) as response:
        yield WatchStream(response)


def rv_of(event: dict[str, Any]) -> int:
    return int(event["object"]["metadata"]["resourceVersion"])
