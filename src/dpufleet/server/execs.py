"""Commands run inside service instances (`dpufleet service exec`), brokered between the API and the agents.

The agents are not reachable from the control plane: each asks for its desired services every few
seconds (`GET /agent/v1/services`). An exec waits here until its DPU's agent asks; it is handed out
once (at most once: a command is never run twice, even if the agent's answer is lost), and the API
request waits for the agent's `POST /agent/v1/services/exec/ID` or gives up with a clear error.

The agent listener and the API may run on different event loops, so the waiting side holds a
`concurrent.futures.Future` (thread-safe), wrapped for its own loop.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..api.agent_services import ExecRequest, ExecResult


@dataclass
class _Pending:
    project: str
    dpu: str
    request: ExecRequest
    result: Future[ExecResult] = field(default_factory=Future)
    handed: bool = False


class ExecBroker:
    """Execs waiting for their DPU's agent, or for its answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    def submit(
        self, project: str, dpu: str, service: str, command: list[str], timeout: float
    ) -> tuple[str, Future[ExecResult]]:
        exec_id = secrets.token_hex(8)
        pending = _Pending(
            project, dpu, ExecRequest(id=exec_id, service=service, command=command, timeoutSeconds=timeout)
        )
        with self._lock:
            self._pending[exec_id] = pending
        return exec_id, pending.result

    def hand_out(self, project: str, dpu: str, services: set[str] | None = None) -> list[ExecRequest]:
        """The execs waiting for this DPU's runtime, each handed out once; `services`: only those of the
        services that runtime runs (a DPU's and its host agent's runtimes both ask for the DPU)."""
        with self._lock:
            found = [
                p
                for p in self._pending.values()
                if not p.handed
                and (p.project, p.dpu) == (project, dpu)
                and (services is None or p.request.service in services)
            ]
            for p in found:
                p.handed = True
        return [p.request for p in found]

    def resolve(self, project: str, dpu: str, exec_id: str, result: ExecResult) -> bool:
        """The agent's answer; False when no such exec waits for this DPU (gone, or another DPU's)."""
        with self._lock:
            pending = self._pending.get(exec_id)
            if pending is None or (pending.project, pending.dpu) != (project, dpu):
                return False
            del self._pending[exec_id]
        if not pending.result.done():
            pending.result.set_result(result)
        return True

    def forget(self, exec_id: str) -> bool:
        """The API gave up waiting: True when the agent had not yet been handed the command."""
        with self._lock:
            pending = self._pending.pop(exec_id, None)
        return pending is not None and not pending.handed
