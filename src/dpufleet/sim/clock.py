"""Emulated time: how long the hardware takes, and timestamps as a BMC writes them.

At the bottom of the emulator (it imports nothing of it), so the BMC, its installer and
its Redfish resources share one notion of time without importing one another.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime


def utcnow_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class BmcTimings:
    """How long the emulated hardware takes. ``time_scale`` shrinks everything (tests use ~0.01)."""

    power_on_seconds: float = 40.0
    power_off_seconds: float = 5.0
    update_seconds: float = 60.0
    bmc_restart_seconds: float = 30.0
    installer_watchdog_seconds: float = 30.0  # a failed installer (or slot) shows its error this long
    time_scale: float = 1.0

    def scaled(self, seconds: float) -> float:
        return max(seconds * self.time_scale, 0.0)


class Deadlines:
    """Stages of `step` seconds each, timed from when the sequence started rather than from when the
    last sleep happened to end: a busy event loop wakes sleepers late, and ten stages in a row would
    otherwise add ten lateness to what the hardware takes."""

    def __init__(self, step: float) -> None:
        self.step = step
        self._mark = time.monotonic()

    def restart(self) -> None:
        """The next stage is timed from now (something between stages took its own time)."""
        self._mark = time.monotonic()

    async def next(self) -> None:
        self._mark += self.step
        await asyncio.sleep(max(0.0, self._mark - time.monotonic()))
