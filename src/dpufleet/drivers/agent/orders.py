"""Install orders in a DPU's status: the mechanism the agent and host-channel paths share.

The control plane never pushes to a device. `install` records an order in the DPU's status
(`status.agentInstall.order`); an agent on the device side -- the DPU's own (drivers/agent/install.py)
or its host's (drivers/agent/host_channel.py) -- picks it up, carries it out and reports each
stage to `status.agentInstall.progress`; `poll` reads that progress. A subclass says only what
differs: whom the order is addressed to (`_addressed`), what `poll` says before the agent has
picked it up (`_waiting`), and what the stages it reports mean (`_read`).
"""

from __future__ import annotations

import abc
import secrets
from dataclasses import dataclass
from typing import Any

from ...api.errors import NotFound
from ...api.meta import isotime, now
from ...runtime.status import mutate_status
from ...store.store import Store
from ..base import InstallInterface, InstallProgress, InstallRequest, InstallState
from ..redfish.client import RedfishError

STATUS_FIELD = "agentInstall"
HOST_CHANNEL = "host-channel"  # order.channel of an order the DPU's host carries out (drivers/agent/host_channel.py)
HANDLE_PREFIX = "agent:"  # an order's handle is this and its id
# What the agents report, and how the control plane reads it.
RUNNING_STATES = {"Pending", "Downloading", "Verifying", "Writing"}
STAGED = "Staged"  # written and marked for the next boot (host channel: pushed, the DPU is booting it)
BOOTED = "Booted"  # the DPU came up from the new image
FELL_BACK = "FellBack"  # the new image did not boot; the DPU runs the previous one
FAILED = "Failed"


def order_of(status: dict[str, Any]) -> dict[str, Any] | None:
    order = (status.get(STATUS_FIELD) or {}).get("order")
    return order if isinstance(order, dict) else None


@dataclass(frozen=True)
class Reported:
    """What the agent last reported for the order being polled (`status.agentInstall.progress`)."""

    order_id: str
    order: dict[str, Any]
    state: str
    done: object  # bytes written so far, as reported
    total: object
    percent: int | None
    slot: object
    message: str
    reason: str | None

    @classmethod
    def of(cls, order_id: str, order: dict[str, Any], progress: dict[str, Any]) -> Reported:
        done, total = progress.get("bytes"), progress.get("total")
        percent = int(done * 100 / total) if isinstance(done, int) and isinstance(total, int) and total else None
        reason = progress.get("reason")
        return cls(
            order_id=order_id,
            order=order,
            state=str(progress.get("state") or "Pending"),
            done=done,
            total=total,
            percent=percent,
            slot=progress.get("slot"),
            message=str(progress.get("message") or ""),
            reason=str(reason) if reason else None,
        )


class OrderInstall(InstallInterface):
    """An install the device side carries out from an order in the DPU's status; `poll` reads its reports."""

    def __init__(self, store: Store, project: str, dpu: str, *, os_target: str | None = None) -> None:
        self.store = store
        self.project = project
        self.dpu = dpu
        self.os_target = os_target  # the firmware id of the DPU's OS: the only thing these paths write

    @abc.abstractmethod
    async def _addressed(self) -> dict[str, Any]:
        """The order's fields that say who carries it out ({}: the DPU's own agent). Raise if nobody can."""

    @abc.abstractmethod
    def _waiting(self, order: dict[str, Any]) -> str:
        """What `poll` says while the agent has not picked the order up yet."""

    @abc.abstractmethod
    async def _read(self, reported: Reported) -> InstallProgress:
        """Where the install stands, given the agent's latest report on it."""

    async def _status(self) -> dict[str, Any]:
        try:
            doc = await self.store.call(self.store.get, "DPU", self.dpu, self.project)
        except NotFound:
            raise RedfishError(f"DPU {self.dpu!r} no longer exists") from None
        return dict(doc.get("status") or {})

    async def _mutate(self, change: Any) -> None:
        def mutate(status: dict[str, Any]) -> None:
            section = dict(status.get(STATUS_FIELD) or {})
            change(section)
            status[STATUS_FIELD] = section

        await mutate_status(self.store, "DPU", self.dpu, mutate, self.project)

    async def install(self, request: InstallRequest) -> str:
        addressed = await self._addressed()
        order_id = f"{request.sha256[:12]}-{secrets.token_hex(4)}"
        order = {
            "id": order_id,
            **addressed,
            "target": request.target,
            "version": request.version,
            "sha256": request.sha256,
            "fileName": f"{request.target}-{request.version}.bin",
            "issuedAt": isotime(now()),
            "open": True,
        }

        def change(section: dict[str, Any]) -> None:
            section["order"] = order
            section["progress"] = {"id": order_id, "state": "Pending"}

        await self._mutate(change)
        return HANDLE_PREFIX + order_id

    async def find_started(self, request: InstallRequest, since: str) -> str | None:
        order = order_of(await self._status())
        if order and order.get("open") and order.get("sha256") == request.sha256:
            return HANDLE_PREFIX + str(order["id"])
        return None

    async def _close(self, order_id: str) -> None:
        def change(section: dict[str, Any]) -> None:
            order = section.get("order") or {}
            if order.get("id") == order_id:
                section["order"] = {**order, "open": False}

        await self._mutate(change)

    async def poll(self, handle: str) -> InstallProgress:
        order_id = handle.removeprefix(HANDLE_PREFIX)
        section = (await self._status()).get(STATUS_FIELD) or {}
        order = section.get("order") or {}
        if order.get("id") != order_id:
            return InstallProgress(InstallState.FAILED, None, "the install order was replaced", "OrderLost")
        progress = section.get("progress") or {}
        if progress.get("id") != order_id:
            return InstallProgress(InstallState.RUNNING, 0, self._waiting(order))
        return await self._read(Reported.of(order_id, order, progress))
