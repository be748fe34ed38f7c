"""The telemetry plugins an agent can run, by name (``Telemetry(plugins=...)``)."""

from __future__ import annotations

from .base import TelemetryPlugin
from .logs_plugin import LogsPlugin
from .os_plugin import OSPlugin

PLUGINS: dict[str, type[TelemetryPlugin]] = {p.name: p for p in (OSPlugin, LogsPlugin)}
DEFAULT_PLUGINS: tuple[str, ...] = tuple(PLUGINS)
