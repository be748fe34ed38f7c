"""The exec broker between `dpufleet service exec` and the DPUs' agents: each command is handed out to
its own DPU's agent once, answered once, and a caller that gives up learns whether it may have run."""

from __future__ import annotations

from dpufleet.api.agent_services import ExecResult
from dpufleet.server.execs import ExecBroker


def test_a_command_is_handed_to_its_own_dpu_once_and_resolved_by_it_only() -> None:
    broker = ExecBroker()
    exec_id, future = broker.submit("default", "dpu-a", "dns", ["hostname"], 5)
    assert broker.hand_out("default", "dpu-b") == []
    assert broker.hand_out("other", "dpu-a") == []
    (handed,) = broker.hand_out("default", "dpu-a")
    assert (handed.id, handed.service, handed.command) == (exec_id, "dns", ["hostname"])
    assert broker.hand_out("default", "dpu-a") == []  # never twice, even if the agent asks again

    assert not broker.resolve("default", "dpu-b", exec_id, ExecResult(exitCode=0))  # another DPU's answer
    assert not future.done()
    assert broker.resolve("default", "dpu-a", exec_id, ExecResult(exitCode=0, output="dns\n"))
    assert future.result(0).output == "dns\n"
    assert not broker.resolve("default", "dpu-a", exec_id, ExecResult(exitCode=1))  # answered already


def test_a_caller_that_gives_up_learns_whether_the_agent_had_the_command() -> None:
    broker = ExecBroker()
    never, _ = broker.submit("default", "dpu-a", "dns", ["true"], 5)
    assert broker.forget(never)  # not handed out: it will not run
    assert broker.hand_out("default", "dpu-a") == []

    taken, future = broker.submit("default", "dpu-a", "dns", ["true"], 5)
    broker.hand_out("default", "dpu-a")
    assert not broker.forget(taken)  # handed out: it may have run
    assert not broker.resolve("default", "dpu-a", taken, ExecResult(exitCode=0))  # a late answer is refused
    assert not future.done()
