"""The agent protocol's flavor messages: the DPUFlavor a DPU's OS should carry, and what its agent made of it.

GET  /agent/v1/flavor          -> DesiredFlavor (the DPU the client certificate names: its status.appliedFlavor)
POST /agent/v1/flavor/status   <- FlavorReport (applied or not and why, what waits for a reboot, drift repaired)
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from .kinds import DPUFlavorSpec


class DesiredFlavor(BaseModel):
    dpu: str
    name: str | None = Field(default=None, description="the DPUFlavor provisioning applied; None: no flavor")
    resourceVersion: str | None = None
    spec: DPUFlavorSpec | None = None


class FlavorRepair(BaseModel):
    """Drift the agent found and undid: which item of the flavor, what it found instead."""

    item: str = Field(min_length=1, max_length=500, description="sysctl net.core.somaxconn, file /etc/x, ...")
    found: str = Field(max_length=2000)


class FlavorReport(BaseModel):
    name: str | None = Field(default=None, max_length=253)
    resourceVersion: str | None = Field(default=None, max_length=64)
    applied: bool = Field(description="every item holds on the running OS (kernel parameters may wait for a boot)")
    problems: list[str] = Field(default_factory=list, max_length=200, description="items that could not be applied")
    pendingReboot: list[str] = Field(
        default_factory=list, max_length=200, description="written for the next boot, not on the running kernel yet"
    )
    repairs: list[FlavorRepair] = Field(default_factory=list, max_length=200)
