"""Driver interfaces: small abstract classes, one per concern, as in Ironic.

Each has validate() (can this driver work with this device, with these
credentials?) and a few verbs. Implementations are chosen by name: a Redfish
one for every BMC, an agent one for in-band work, vendor overrides where a
vendor differs.
"""

from __future__ import annotations

import abc


class PowerInterface(abc.ABC):
    @abc.abstractmethod
    async def validate(self) -> None:
        """Raise if the device cannot be controlled (unreachable, wrong credentials)."""

    @abc.abstractmethod
    async def get_power_state(self) -> str:
        """On, Off, PoweringOn, PoweringOff, or Unknown."""

    @abc.abstractmethod
    async def reset(self, reset_type: str) -> None:
        """Redfish reset types: On, ForceOff, GracefulShutdown, GracefulRestart, ForceRestart, PowerCycle..."""
