"""The agent's telemetry loop does not load aiohttp (11 MiB it never uses: nats-py's websocket transport), and
leaves it importable for anything else in the process; a websocket bus URL is refused with the reason."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from dpufleet.agent.telemetry.collector import Telemetry
from dpufleet.api.telemetry import BusAccess, TelemetryAssignment, TelemetryClass

PROBE = """
import sys
import dpufleet.agent.daemon
print("aiohttp" in sys.modules)
import aiohttp, nats.aio.client
print(aiohttp.ClientSession is not None)
"""


def test_the_agent_does_not_load_aiohttp_and_leaves_it_importable() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_a_websocket_bus_url_is_refused_naming_it_and_samples_stay_buffered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "loadavg").write_text("0.10 0.20 0.30 1/100 1\n")
    telemetry = Telemetry(tmp_path, "MT1", tmp_path / "spool")
    bus = BusAccess(url="ws://127.0.0.1:9", user="u", password="p", subjectPrefix="dpufleet.tm.default.MT1")
    telemetry.assign(TelemetryAssignment(classes=[TelemetryClass.LOAD], bus=bus))
    produced = telemetry.collect_once()
    assert asyncio.run(telemetry.forward()) == 0
    assert asyncio.run(telemetry.forward()) == 0
    said = [r.getMessage() for r in caplog.records if "websockets" in r.getMessage()]
    assert said == ["telemetry: the bus URL ws://127.0.0.1:9: the agent speaks nats:// or tls:// to the bus, "
                    "not websockets; samples stay buffered"]  # once, not at every forward  # fmt: skip
    assert produced > 0 and telemetry.accounting().buffered == {"load": produced}
