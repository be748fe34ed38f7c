"""One handler per provisioning phase; `HANDLERS` maps each working phase to its handler."""

from __future__ import annotations

from ...api.kinds import Phase
from ..machine import PhaseHandler
from .available import Validate
from .configuring import Configure
from .installing import Install
from .preparing_host import PrepareHost
from .rebooting import Reboot
from .staging import StageImage

HANDLERS: dict[Phase, PhaseHandler] = {
    handler.phase: handler for handler in (Validate(), PrepareHost(), StageImage(), Install(), Reboot(), Configure())
}
