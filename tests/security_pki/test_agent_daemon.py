"""Given an emulated DPU with an IDevID, the real agent enrolls itself, reports over mTLS and renews."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509

from dpufleet.agent import credentials as agent_credentials
from dpufleet.agent.credentials import EnrollmentOptions
from dpufleet.agent.daemon import Agent, AgentConfig
from dpufleet.crypto import pki
from dpufleet.sim.fleet import build_fleet
from dpufleet.sim.identity import IDEVID_CERT, IDEVID_KEY, SimIdentities

from .conftest import Fleet


def _emulated_dpu(tmp: Path) -> tuple[Path, str, SimIdentities]:
    sim = build_fleet(1, 1, ["nvidia-bluefield-3"], 7, tmp / "sim")
    identities = SimIdentities()
    identities.provision(sim, tmp / "sim")
    dpu = sim.dpus[0]
    assert dpu.osroot is not None
    return dpu.osroot, dpu.serial, identities


def _config(fleet: Fleet, root: Path, serial: str, **enrollment: object) -> AgentConfig:
    return AgentConfig(
        fleet.agent_url,
        None,
        root,
        "dpu",
        serial=serial,
        state_dir=root / "var/lib/dpufleet/agent",
        enrollment=EnrollmentOptions(ca_file=fleet.ca_file, **enrollment),  # type: ignore[arg-type]
    )


def test_the_agent_enrolls_with_its_idevid_renews_and_keeps_its_key_private(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, serial, identities = _emulated_dpu(tmp_path)
    for ca in identities.cas.values():
        fleet.trust(ca)
    fleet.expect(serial)
    config = _config(fleet, root, serial, idevid_cert=root / IDEVID_CERT, idevid_key=root / IDEVID_KEY)

    async def scenario() -> None:
        agent = Agent(config)
        try:
            await agent.secure(serial)
            inventory = await agent.collect()
            reply = await agent.send(inventory, serial, inventory.hostname)
            assert reply["object"] == f"dpu-{serial.lower()}"
            assert agent.credentials is not None
            first = agent.credentials.certificate()
            assert first is not None
            # sixteen and a half hours later (two thirds of a day and a bit), the agent renews
            later = pki.utcnow() + dt.timedelta(hours=16, minutes=30)
            monkeypatch.setattr(agent_credentials, "utcnow", lambda: later)
            await agent.secure(serial)
            second = agent.credentials.certificate()
            assert second is not None and second.serial_number != first.serial_number
            assert second.public_key() != first.public_key()  # a new key with every renewal
            await agent.send(None, serial, inventory.hostname)
        finally:
            await agent.aclose()

    asyncio.run(scenario())
    state = root / "var/lib/dpufleet/agent"
    assert os.stat(state).st_mode & 0o777 == 0o700
    for name in ("agent.key", "agent.crt", "ca.crt"):
        assert os.stat(state / name).st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
    assert pki.identity_of(cert) == pki.AgentIdentity("dpu", serial)


def test_the_agent_enrolls_with_a_token_and_a_pinned_ca_hash(fleet: Fleet, tmp_path: Path) -> None:
    root, serial, _ = _emulated_dpu(tmp_path)
    token = fleet.token(serial)
    assert fleet.api.server is not None
    pin = fleet.api.server.ca.fingerprint
    config = _config(fleet, root, serial, token=token)
    assert config.enrollment is not None
    config.enrollment.ca_file = None
    config.enrollment.ca_sha256 = pin

    async def scenario() -> None:
        agent = Agent(config)
        try:
            await agent.secure(serial)
            inventory = await agent.collect()
            await agent.send(inventory, serial, inventory.hostname)
        finally:
            await agent.aclose()

    asyncio.run(scenario())


def test_the_agent_refuses_a_server_whose_ca_is_not_the_pinned_one(fleet: Fleet, tmp_path: Path) -> None:
    root, serial, _ = _emulated_dpu(tmp_path)
    config = _config(fleet, root, serial, token=fleet.token(serial))
    assert config.enrollment is not None
    config.enrollment.ca_file = None
    config.enrollment.ca_sha256 = "sha256:" + "0" * 64

    async def scenario() -> None:
        agent = Agent(config)
        try:
            with pytest.raises(agent_credentials.EnrollmentError, match="not the pinned"):
                await agent.secure(serial)
        finally:
            await agent.aclose()

    asyncio.run(scenario())
