"""A stateful service upgraded by a state handoff on real runc: while a client keeps counting, the DPU's
runtime drains the old instance, exports its count, starts the new one with it and stops the old. No
request is lost or refused (the runtime holds the listening socket: connections wait in its queue), and
the count is exact. A handoff that fails puts the old instance back to work; after an agent restart the
runtime takes the socket back from the running instance and hands over again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpufleet.agent.sandbox import netns_name, netns_path
from dpufleet.agent.services import ServiceRuntime, ServicesConfig
from dpufleet.api.agent_services import DesiredServices
from dpufleet.api.kinds import DPUServiceSpec
from dpufleet.services.desired import desired_instance
from dpufleet.sim.tally import build_tally, compiler
from support.oci import served_image, tools_missing

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc and network namespaces need root"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"not installed: {', '.join(tools_missing())}"),
    pytest.mark.skipif(compiler() is None, reason="no C compiler to build the tally service"),
]
DPU = "dpu-hand"
CLIENT = r"""
import json, os, sys, time, urllib.request
stop, errors, answers = sys.argv[1], [], []
while not os.path.exists(stop):
    try:
        req = urllib.request.Request("http://127.0.0.1:8080/add", data=b"", method="POST")
        answers.append(int(urllib.request.urlopen(req, timeout=60).read()))
    except Exception as exc:
        errors.append(repr(exc))
    time.sleep(0.005)
value = int(urllib.request.urlopen("http://127.0.0.1:8080/value", timeout=60).read())
print(json.dumps({"answers": answers, "errors": errors, "value": value}))
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    where = tmp_path_factory.mktemp("tally")
    binary = build_tally(where)
    with served_image(where / "image", extra={"bin/tally": binary}) as served:
        yield served


def tally(image: dict[str, str], version: str, args: list[str] | None = None) -> DPUServiceSpec:
    return DPUServiceSpec.model_validate(
        {
            "artifact": {"ociArchive": {"url": image["url"], "sha256": image["sha256"]}},
            "placement": {"mode": "EveryDPU"},
            "config": {"args": args or ["/bin/tally"], "env": {"VERSION": version}},
            "handoff": {"listen": [8080], "timeoutSeconds": 10},
        }
    )


def desired(spec: DPUServiceSpec) -> DesiredServices:
    return DesiredServices(dpu=DPU, instances=[desired_instance("tally", f"tally/{DPU}", spec)])


STARTED: list[ServiceRuntime] = []


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    while STARTED:
        rt = STARTED.pop()
        rt.kill_all()
        rt._drop_sandbox("tally")


def runtime(tmp_path: Path) -> ServiceRuntime:
    config = ServicesConfig(tmp_path / "services", dpu=DPU, interval=0.2, stop_grace=2.0)
    rt = ServiceRuntime(config, "http://127.0.0.1:9", lambda: None)  # type: ignore[arg-type,return-value]
    STARTED.append(rt)
    return rt


async def converged(rt: ServiceRuntime, want: DesiredServices, check: Any, timeout: float = 60.0) -> None:
    """Converge every 0.2 s (as the agent's loop does) until `check(instance)` holds, with no handoff under
    way."""
    deadline = time.monotonic() + timeout
    while True:
        await rt.converge(want)
        inst = rt.instances.get("tally")
        if inst is not None and check(inst) and "tally" not in rt._handoffs:
            return
        if time.monotonic() > deadline:
            state = inst and (inst.phase, inst.reason, inst.desired.revision)
            raise AssertionError(f"tally never got there: {state}")
        await asyncio.sleep(0.2)


class Client:
    """A client counting in the service's namespace, one request after another, until stopped."""

    def __init__(self, where: Path) -> None:
        self.stop_file = where / "stop-client"
        self.stop_file.unlink(missing_ok=True)
        ns = netns_name(DPU, "tally")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, str(self.stop_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        out, err = await asyncio.to_thread(self.proc.communicate, timeout=120)
        assert self.proc.returncode == 0, err
        return dict(json.loads(out))


def test_an_upgrade_hands_the_state_over_without_losing_a_request(tmp_path: Path, image: dict[str, str]) -> None:
    async def go() -> None:
        rt = runtime(tmp_path)
        v1, v2 = desired(tally(image, "1")), desired(tally(image, "2"))
        await converged(rt, v1, lambda i: i.phase == "Running")
        first = rt.instances["tally"]
        assert netns_path(netns_name(DPU, "tally")).exists()
        client = Client(tmp_path)
        await asyncio.sleep(1.0)
        await converged(rt, v2, lambda i: i.desired.revision == v2.instances[0].revision and i.phase == "Running")
        second = rt.instances["tally"]
        assert second.pid != first.pid and second.cid != first.cid  # a new container
        assert first.cid not in rt.containers()  # the old one is gone
        await asyncio.sleep(1.0)
        result = await client.finish()
        answers = result["answers"]
        assert result["errors"] == []  # nothing refused, reset or timed out
        assert len(answers) > 50
        assert answers == list(range(1, len(answers) + 1))  # every answer once, in order: no count lost
        assert result["value"] == len(answers)
        log = (tmp_path / "services" / "logs" / "tally.log").read_text()
        assert "tally: drained at" in log and "tally: imported" in log
        assert not (rt._handoff_dir(second.cid) / "state").exists()  # imported once: a restart starts anew
        await rt.stop_instance("tally")
        assert not netns_path(netns_name(DPU, "tally")).exists()
        await rt.shutdown()

    asyncio.run(go())


def test_a_failed_handoff_keeps_the_old_instance_serving(tmp_path: Path, image: dict[str, str]) -> None:
    async def go() -> None:
        rt = runtime(tmp_path)
        v1 = desired(tally(image, "1"))
        broken = desired(tally(image, "2", args=["/bin/sh", "-c", "echo cannot start; exit 3"]))
        await converged(rt, v1, lambda i: i.phase == "Running")
        first = rt.instances["tally"]
        client = Client(tmp_path)
        await asyncio.sleep(0.5)
        await converged(rt, broken, lambda i: "state handoff" in (i.reason or "") and "failed" in (i.reason or ""))
        inst = rt.instances["tally"]
        assert inst is first and inst.pid == first.pid and inst.phase == "Running"
        assert "starting the new instance" in (inst.reason or "")
        assert [c for c in rt.containers() if c != first.cid] == []  # the broken one is gone
        await asyncio.sleep(1.0)  # it was told to resume: it serves again
        result = await client.finish()
        assert result["errors"] == []
        assert result["answers"] == list(range(1, len(result["answers"]) + 1))
        assert result["value"] == len(result["answers"])
        await rt.stop_instance("tally")
        await rt.shutdown()

    asyncio.run(go())


def test_after_an_agent_restart_the_socket_is_taken_back_and_handed_over(tmp_path: Path, image: dict[str, str]) -> None:
    async def go() -> None:
        v1, v2 = desired(tally(image, "1")), desired(tally(image, "2"))
        first = runtime(tmp_path)
        first.save_desired(v1)
        await first.restore()
        await converged(first, v1, lambda i: i.phase == "Running")
        pid = first.instances["tally"].pid
        client = Client(tmp_path)
        await asyncio.sleep(0.5)
        await first.shutdown()  # the agent stops; the instance serves on
        for sock in first._sockets.get("tally", {}).values():
            sock.close()  # what the agent's exit does to its copy
        first._sockets.clear()

        second = runtime(tmp_path)
        await second.restore()
        await converged(second, v1, lambda i: i.phase == "Running" and i.pid == pid)
        assert set(second._sockets["tally"]) == {8080}  # taken back from the running instance
        await converged(second, v2, lambda i: i.desired.revision == v2.instances[0].revision and i.phase == "Running")
        await asyncio.sleep(0.5)
        result = await client.finish()
        assert result["errors"] == []
        assert result["answers"] == list(range(1, len(result["answers"]) + 1))
        assert result["value"] == len(result["answers"])
        await second.stop_instance("tally")
        await second.shutdown()

    asyncio.run(go())


def test_a_service_deleted_and_made_again_gets_a_new_instance_not_the_old_ones_state(
    tmp_path: Path, image: dict[str, str]
) -> None:
    """Deleted and made again between two of the agent's passes, a service of the same name (and another
    uid) is another service: the old instance is stopped, nothing is handed over, the count starts anew."""

    async def go() -> None:
        rt = runtime(tmp_path)
        old, new = desired(tally(image, "1")), desired(tally(image, "2"))
        old.instances[0].serviceUID, new.instances[0].serviceUID = "uid-old", "uid-new"
        await converged(rt, old, lambda i: i.phase == "Running")
        first = rt.instances["tally"]
        await asyncio.to_thread(count_in_namespace, 5)
        await converged(rt, new, lambda i: i.desired.serviceUID == "uid-new" and i.phase == "Running")
        assert rt.instances["tally"].pid != first.pid
        assert await asyncio.to_thread(count_in_namespace, 1) == [1], "nothing of the old service was handed over"
        log = (tmp_path / "services" / "logs" / "tally.log").read_text()
        assert "tally: drained at" not in log and "tally: imported" not in log
        await rt.shutdown()

    asyncio.run(go())


def count_in_namespace(times: int) -> list[int]:
    script = "import sys, urllib.request\nfor _ in range(int(sys.argv[1])):\n" + (
        "    print(urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:8080/add', data=b'', "
        "method='POST'), timeout=30).read().decode())"
    )
    out = subprocess.run(["ip", "netns", "exec", netns_name(DPU, "tally"), sys.executable, "-c", script, str(times)],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    return [int(line) for line in out.split()]
