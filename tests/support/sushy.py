"""OpenStack's sushy-tools emulator (fake driver, HTTP Basic auth) on 127.0.0.1: a Redfish service this
project did not write, started in a temp dir and stopped by its PID."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .net import free_port, wait_until

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
USER, PASSWORD = "ironic", "Sushy-Peer-Pw-7"
SYSTEMS: list[dict[str, Any]] = [
    {"uuid": "5c3a0c9e-6d7a-4f3e-9a55-0f1a2b3c4d01", "name": "node-0", "power_state": "On", "nics": [{"mac": "52:54:00:aa:00:01"}]},
    {"uuid": "5c3a0c9e-6d7a-4f3e-9a55-0f1a2b3c4d02", "name": "node-1", "power_state": "Off", "nics": [{"mac": "52:54:00:aa:00:02"}]},
]  # fmt: skip

# The fake driver applies a power change 1-11 s after the request (randint), to mimic slow hardware.
# Only that delay is removed, so each transition shows on the next read; the HTTP service is unchanged.
LAUNCH = (
    "import random, sys\n"
    "random.randint = lambda low, high: 0\n"
    "from sushy_tools.emulator.main import main\n"
    "sys.argv[0] = 'sushy-emulator'\n"
    "sys.exit(main())\n"
)


@dataclass
class Sushy:
    url: str
    proc: subprocess.Popen[bytes]


@contextmanager
def running_sushy(directory: Path, systems: list[dict[str, Any]] = SYSTEMS) -> Iterator[Sushy]:
    """sushy-emulator serving `systems`; skipped where sushy-tools is not installed (a failure in CI)."""
    if importlib.util.find_spec("sushy_tools") is None:
        if IN_CI:
            pytest.fail("sushy-tools is not installed (CI=true: the Redfish peer test must run)", pytrace=False)
        pytest.skip("sushy-tools is not installed")
    import bcrypt

    htpasswd = directory / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    config = directory / "emulator.conf"
    config.write_text(
        f"SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {json.dumps(systems)}\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(directory / 'state')!r}\n"
        f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
    )
    port = free_port()
    log = (directory / "sushy.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "--config", str(config), "-i", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SUSHY_EMULATOR_FAKE_DRIVER": "True"},
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sushy-emulator exited {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            return httpx.get(url + "/redfish/v1", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout=20, interval=0.1, what="sushy-emulator's service root")
        yield Sushy(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
