"""Loopback helpers: free ports, and polling until something is so (a server answers, an object settles)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(
    what: str,
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    show: Callable[[T], object] = repr,
) -> T:
    """Fetch until `done(value)` and return that value; after timeout seconds fail naming `what` and
    showing the last value as `show` renders it (what a reader needs to see why it never settled)."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen:\n{show(value)}")
        time.sleep(interval)
        value = fetch()
    return value


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition") -> None:
    """Poll predicate until it is true; fail with `what` after timeout seconds."""
    poll(what, predicate, bool, timeout, interval=interval)


def netns_ping(namespace: str, to: str, count: int = 3, interval: str = "0.1") -> int:
    """Replies `ping` received, sent from inside a network namespace (one second's wait for each)."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "1", to],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for line in done.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    raise AssertionError(f"ping printed no summary: {done.stdout} {done.stderr}")
