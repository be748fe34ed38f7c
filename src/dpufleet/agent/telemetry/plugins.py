"""The telemetry plugins an agent can run, by name (``Telemetry(plugins=...)``)."""

from __future__ import annotations

from .base import TelemetryPlugin
from .dataplane_plugin import DataplanePlugin
from .logs_plugin import LogsPlugin
from .os_plugin import OSPlugin
from .services_plugin import ServicesPlugin

PLUGINS: dict[str, type[TelemetryPlugin]] = {p.name: p for p in (OSPlugin, LogsPlugin, ServicesPlugin, DataplanePlugin)}
DEFAULT_PLUGINS: tuple[str, ...] = tuple(PLUGINS)
