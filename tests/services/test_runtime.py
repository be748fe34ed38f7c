"""The DPU's service runtime on real runc: what an instance gets (limits, isolation, files), how it is
kept running (restart policies, probes), and what survives an agent restart and a DPU power loss."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpufleet.agent.services import DEFAULT_CAPS, ServiceRuntime, ServicesConfig, cpulist, online_cpus
from dpufleet.api.agent_services import EXEC_OUTPUT_BYTES, DesiredServices, ExecRequest
from dpufleet.api.kinds import DPUServiceSpec
from dpufleet.services.desired import desired_instance
from dpufleet.sim.oci import build_bundle
from support.oci import tools_missing

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runc with cgroup limits needs root"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"not installed: {', '.join(tools_missing())}"),
]
CAP_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
            "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10}  # fmt: skip


def spec(image: dict[str, str], script: str, **more: Any) -> DPUServiceSpec:
    body: dict[str, Any] = {
        "artifact": {"ociArchive": {"url": image["url"], "sha256": image["sha256"]}},
        "placement": {"mode": "EveryDPU"},
        "config": {"args": ["/bin/sh", "-c", script]},
    }
    for key, value in more.items():
        if key in ("files", "reload"):
            body["config"][key] = value
        else:
            body[key] = value
    return DPUServiceSpec.model_validate(body)


STARTED: list[ServiceRuntime] = []


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """A failed test leaves no container running."""
    yield
    while STARTED:
        STARTED.pop().kill_all()


def runtime(tmp_path: Path, name: str = "dpu-test") -> ServiceRuntime:
    config = ServicesConfig(tmp_path / "services", dpu=name, interval=0.2, stop_grace=1.0)
    rt = ServiceRuntime(config, "http://127.0.0.1:9", lambda: None)  # type: ignore[arg-type,return-value]
    STARTED.append(rt)
    return rt


def desired(*items: tuple[str, DPUServiceSpec]) -> DesiredServices:
    return DesiredServices(dpu="dpu-test", instances=[desired_instance(n, f"{n}/dpu-test", s) for n, s in items])


async def until(rt: ServiceRuntime, service: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        report = rt.report()
        inst = next((i for i in report.instances if i.service == service), None)
        lines = next((x.lines for x in report.logs if x.service == service), [])
        if inst is not None and check(inst, lines):
            return inst, lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{service}: not reached in {timeout}s: {inst}, log {lines[-5:]}")
        await asyncio.sleep(0.1)


def test_an_instance_runs_within_its_limits_isolated_with_its_files(tmp_path: Path, image: dict[str, str]) -> None:
    script = (
        "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max);"
        "echo links=$(ip -o link | wc -l); grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status;"
        "touch /written 2>/dev/null && echo root=rw || echo root=ro; touch /tmp/ok && echo tmp=rw;"
        "echo conf=$(cat /etc/app/app.conf); echo env=$GREETING; echo ready; sleep 3600"
    )
    web = spec(
        image,
        script,
        resources={"memoryMiB": 48, "cpuMillicores": 250},
        files=[{"path": "/etc/app/app.conf", "content": "level=1"}],
    )
    web.config.env["GREETING"] = "hello"

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("web", web)))
        inst, lines = await until(rt, "web", lambda i, lines: i.phase == "Running" and "ready" in lines)
        assert inst.ready and inst.restarts == 0
        assert inst.memoryLimitBytes == 48 * 1024 * 1024
        assert inst.cpuSeconds is not None and inst.cpuSeconds > 0  # read from its cgroup
        said = dict(line.replace(":\t", "=").split("=", 1) for line in lines if "=" in line or ":\t" in line)
        assert said["mem"] == str(48 * 1024 * 1024)
        assert said["links"] == "1"  # loopback only: its own network namespace
        assert said["Seccomp"] == "2" and said["NoNewPrivs"] == "1"
        assert int(said["CapEff"], 16) == sum(1 << CAP_BITS[c] for c in DEFAULT_CAPS)
        assert said["root"] == "ro" and said["tmp"] == "rw"
        assert said["conf"] == "level=1" and said["env"] == "hello"
        cgroup = Path("/sys/fs/cgroup/cpu/dpufleet/dpu-test/web/cpu.cfs_quota_us")
        if cgroup.exists():  # cgroup v1 (this machine); v2 puts both figures in cpu.max
            assert cgroup.read_text().strip() == "25000"
        await rt.stop_instance("web")
        assert rt.containers() == {}
        await rt.shutdown()

    asyncio.run(go())


def test_a_restricted_sandbox_runs_it_as_nobody_with_no_capability_and_few_processes(
    tmp_path: Path, image: dict[str, str]
) -> None:
    """What a project's serviceSandboxes gives a publisher class it restricts (services/trust.py)."""
    script = (
        "grep -E '^(Uid|Gid|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status;"
        "echo pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max);"
        "cp /bin/busybox /tmp/bb 2>/dev/null && (/tmp/bb true 2>/dev/null && echo tmpexec=yes || echo tmpexec=no);"
        "echo ready; sleep 3600"
    )
    item = desired_instance("tp", "tp/dpu-test", spec(image, script)).model_copy(update={"sandbox": "restricted"})

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(DesiredServices(dpu="dpu-test", instances=[item]))
        inst, lines = await until(rt, "tp", lambda i, lines: i.phase == "Running" and "ready" in lines)
        said = dict(line.replace(":\t", "=").split("=", 1) for line in lines if "=" in line or ":\t" in line)
        assert said["Uid"].split()[:2] == ["65534", "65534"] and said["Gid"].split()[0] == "65534"
        assert int(said["CapEff"], 16) == int(said["CapBnd"], 16) == int(said["CapAmb"], 16) == 0
        assert said["NoNewPrivs"] == "1" and said["pids"] == "64"
        assert said["tmpexec"] == "no"  # nothing it writes can be run
        # the policy relaxed: the same revision, but the DPU restarts it with the standard sandbox
        await rt.converge(DesiredServices(dpu="dpu-test", instances=[item.model_copy(update={"sandbox": "standard"})]))
        inst, lines = await until(rt, "tp", lambda i, lines: i.phase == "Running" and i.restarts == 0
                                  and any(x.startswith("Uid:\t0") for x in lines))  # fmt: skip
        assert inst.revision == item.revision
        await rt.shutdown()

    asyncio.run(go())


def _cpuset(service: str) -> str:
    for where in (f"/sys/fs/cgroup/cpuset/dpufleet/dpu-test/{service}", f"/sys/fs/cgroup/dpufleet/dpu-test/{service}"):
        path = Path(where) / "cpuset.cpus"
        if path.exists():
            return path.read_text().strip()
    raise AssertionError(f"{service}: no cpuset cgroup")


@pytest.mark.skipif(len(online_cpus()) < 2, reason="pinning a core away from the shared ones needs two")
def test_a_pinned_instance_has_its_cores_alone_and_the_shared_ones_move_off_them(
    tmp_path: Path, image: dict[str, str]
) -> None:
    """resources.pinnedCores on the DPU: the scheduler's cores as the instance's cpuset, checked in its cgroup;
    the instances that share cores are moved off them (runc update) and back when the pinned one goes."""
    online = online_cpus()
    pinned_core, rest = online[-1], cpulist(online[:-1])
    pin = desired_instance("pin", "pin/dpu-test", spec(image, "echo ready; sleep 3600", resources={"pinnedCores": 1}))
    pin = pin.model_copy(update={"cores": [pinned_core]})
    shared = desired_instance("shared", "shared/dpu-test", spec(image, "echo ready; sleep 3600"))
    absent = pin.model_copy(update={"service": "absent", "instance": "absent/dpu-test", "cores": [online[-1] + 64]})

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(DesiredServices(dpu="dpu-test", instances=[shared]))
        await until(rt, "shared", lambda i, lines: i.phase == "Running" and "ready" in lines)
        before = _cpuset("shared")
        await rt.converge(DesiredServices(dpu="dpu-test", instances=[pin, shared, absent]))
        await until(rt, "pin", lambda i, lines: i.phase == "Running" and "ready" in lines)
        assert _cpuset("pin") == str(pinned_core)
        assert _cpuset("shared") == rest  # moved off the pinned core, not restarted
        assert next(i for i in rt.report().instances if i.service == "shared").restarts == 0
        inst, _ = await until(rt, "absent", lambda i, lines: i.phase == "Failed")
        assert inst.reason == (f"its pinned cores {online[-1] + 64} are not online on this DPU "
                               f"(online: {cpulist(online)})")  # fmt: skip
        await rt.converge(DesiredServices(dpu="dpu-test", instances=[shared]))  # the pinned one goes
        assert _cpuset("shared") == before == cpulist(online)
        await rt.shutdown()

    asyncio.run(go())


def test_the_limits_are_enforced_past_them_memory_is_killed_and_cpu_is_throttled(
    tmp_path: Path, image: dict[str, str]
) -> None:
    """Not only written to the cgroup: an instance that takes more memory than its limit is killed by the
    kernel and says so; one that spins gets no more than its share of a core."""
    hog = spec(image, "echo start; exec dd if=/dev/zero of=/dev/null bs=64M count=1", restartPolicy="Never",
               resources={"memoryMiB": 16})  # fmt: skip
    spin = spec(image, "echo spinning; while :; do :; done", resources={"cpuMillicores": 100})

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("hog", hog), ("spin", spin)))
        killed, _ = await until(rt, "hog", lambda i, _: i.phase == "Failed")
        assert killed.reason is not None
        assert killed.reason.startswith("out of memory: the kernel killed it at its limit of 16 MiB"), killed.reason
        await until(rt, "spin", lambda i, lines: i.phase == "Running" and "spinning" in lines)
        began = time.monotonic()
        first = (await until(rt, "spin", lambda i, _: i.cpuSeconds is not None))[0].cpuSeconds
        await asyncio.sleep(3)
        used = (await until(rt, "spin", lambda i, _: i.cpuSeconds is not None))[0].cpuSeconds - first
        wall = time.monotonic() - began
        assert used <= 0.1 * wall * 2, f"{used:.2f} s of CPU in {wall:.1f} s at a limit of 0.1 core"
        stat = Path("/sys/fs/cgroup/cpu/dpufleet/dpu-test/spin/cpu.stat")
        if stat.exists():  # cgroup v1 (this machine)
            throttled = dict(line.split() for line in stat.read_text().splitlines())
            assert int(throttled["nr_throttled"]) > 0
        for name in ("hog", "spin"):
            await rt.stop_instance(name)
        await rt.shutdown()

    asyncio.run(go())


def test_a_config_change_without_a_declared_reload_restarts_the_instance(tmp_path: Path, image: dict[str, str]) -> None:
    script = "echo conf=$(cat /etc/app.conf); sleep 3600"
    first = spec(image, script, files=[{"path": "/etc/app.conf", "content": "v1"}])
    second = spec(image, script, files=[{"path": "/etc/app.conf", "content": "v2"}])
    assert desired(("cfg", first)).instances[0].revision != desired(("cfg", second)).instances[0].revision

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("cfg", first)))
        await until(rt, "cfg", lambda i, lines: i.phase == "Running" and "conf=v1" in lines)
        pid = rt.instances["cfg"].pid
        await rt.converge(desired(("cfg", second)))
        await until(rt, "cfg", lambda i, lines: "conf=v2" in lines)
        assert rt.instances["cfg"].pid != pid  # a new container, with the new file
        await rt.stop_instance("cfg")
        await rt.shutdown()

    asyncio.run(go())


def test_a_config_change_reloads_by_http_and_a_failed_reload_restarts(tmp_path: Path, image: dict[str, str]) -> None:
    # busybox httpd answers POST /cgi-bin/reload by running the script: it writes the new config to the log
    cgi = "#!/bin/sh\necho Content-Type: text/plain; echo; echo ok; echo reloaded $(cat /etc/app.conf) > /proc/1/fd/1\n"
    script = (
        f"mkdir -p /tmp/www/cgi-bin; printf '{cgi}' > /tmp/www/cgi-bin/reload; chmod +x /tmp/www/cgi-bin/reload;"
        "echo up $(cat /etc/app.conf); exec httpd -f -p 8080 -h /tmp/www"
    )
    http = {"http": {"port": 8080, "path": "/cgi-bin/reload"}}
    first = spec(image, script, files=[{"path": "/etc/app.conf", "content": "v1"}], reload=http)
    second = spec(image, script, files=[{"path": "/etc/app.conf", "content": "v2"}], reload=http)
    broken = {"http": {"port": 8081, "path": "/cgi-bin/reload"}}  # nothing listens there
    third = spec(image, script, files=[{"path": "/etc/app.conf", "content": "v3"}], reload=broken)
    assert desired(("web", first)).instances[0].revision == desired(("web", second)).instances[0].revision

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("web", first)))
        await until(rt, "web", lambda i, lines: i.phase == "Running" and "up v1" in lines)
        pid = rt.instances["web"].pid
        await rt.converge(desired(("web", second)))
        report, _ = await until(rt, "web", lambda i, lines: "reloaded v2" in lines)
        assert rt.instances["web"].pid == pid and report.restarts == 0
        assert report.configRevision == desired(("web", second)).instances[0].configRevision
        await rt.converge(desired(("web", third)))
        report, _ = await until(rt, "web", lambda i, lines: "up v3" in lines and i.restarts == 1)
        assert report.exitCode in (137, 143)  # stopped by the runtime (its PID 1 ignores SIGTERM: then SIGKILL)
        await rt.stop_instance("web")
        await rt.shutdown()

    asyncio.run(go())


def test_a_config_change_reaches_the_running_instance_without_a_restart(tmp_path: Path, image: dict[str, str]) -> None:
    script = "trap 'echo reloaded $(cat /etc/app.conf)' HUP; echo up; while true; do sleep 1 & wait; done"
    first = spec(image, script, files=[{"path": "/etc/app.conf", "content": "v1"}], reload={"signal": "HUP"})
    second = spec(image, script, files=[{"path": "/etc/app.conf", "content": "v2"}], reload={"signal": "HUP"})

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("cfg", first)))
        await until(rt, "cfg", lambda i, lines: i.phase == "Running" and "up" in lines)
        pid = rt.instances["cfg"].pid
        assert desired(("cfg", first)).instances[0].revision == desired(("cfg", second)).instances[0].revision
        await rt.converge(desired(("cfg", second)))
        await until(rt, "cfg", lambda i, lines: "reloaded v2" in lines)
        assert rt.instances["cfg"].pid == pid and rt.report().instances[0].restarts == 0
        await rt.stop_instance("cfg")
        await rt.shutdown()

    asyncio.run(go())


def test_a_native_bundle_runs_in_the_same_sandbox(tmp_path: Path, image: dict[str, str]) -> None:
    archive, sha = build_bundle(Path(image["path"]).parent)  # served beside the image
    native = DPUServiceSpec.model_validate(
        {
            "artifact": {"bundle": {"url": f"{image['base']}/{archive.name}", "sha256": sha}},
            "placement": {"mode": "EveryDPU"},
            "config": {"args": ["/bin/sh", "-c", "echo native links=$(ip -o link | wc -l); sleep 3600"]},
            "resources": {"memoryMiB": 24},
        }
    )
    tampered = native.model_copy(deep=True)
    assert tampered.artifact.bundle is not None
    tampered.artifact.bundle.sha256 = "0" * 64

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("native", native), ("tampered", tampered)))
        inst, lines = await until(
            rt, "native", lambda i, lines: i.phase == "Running" and any("native" in x for x in lines)
        )
        assert "native links=1" in lines and inst.memoryLimitBytes == 24 * 1024 * 1024
        bad, _ = await until(rt, "tampered", lambda i, _: i.phase == "Failed")
        assert "has sha256" in (bad.reason or "") and "not run" in (bad.reason or "")
        for name in ("native", "tampered"):
            await rt.stop_instance(name)
        await rt.shutdown()

    asyncio.run(go())


def test_restart_policies_and_exit_codes(tmp_path: Path, image: dict[str, str]) -> None:
    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(
            desired(
                ("crash", spec(image, "echo boom; exit 3")),
                ("once", spec(image, "echo bye; exit 4", restartPolicy="Never")),
                ("job", spec(image, "echo done; exit 0", restartPolicy="OnFailure")),
            )
        )
        crash, _ = await until(rt, "crash", lambda i, _: i.restarts >= 2)
        assert crash.reason == "exited with status 3" and crash.exitCode == 3
        once, _ = await until(rt, "once", lambda i, _: i.phase == "Failed")
        assert once.exitCode == 4 and once.restarts == 0
        job, _ = await until(rt, "job", lambda i, _: i.phase == "Succeeded")
        assert job.exitCode == 0 and job.restarts == 0
        for name in ("crash", "once", "job"):
            await rt.stop_instance(name)
        await rt.shutdown()

    asyncio.run(go())


def test_probes_decide_ready_and_restart_a_dead_instance(tmp_path: Path, image: dict[str, str]) -> None:
    slow_http = spec(
        image,
        "sleep 2; mkdir -p /tmp/www; echo ok > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www",
        probes={"readiness": {"http": {"port": 8080, "path": "/index.html"}, "periodSeconds": 1}},
    )
    tcp = spec(
        image,
        "exec httpd -f -p 9000 -h /tmp",
        probes={"readiness": {"tcp": {"port": 9000}, "periodSeconds": 1}},
    )
    hung = spec(
        image,
        "touch /tmp/alive; sleep 3; rm /tmp/alive; sleep 3600",
        probes={"liveness": {"exec": ["cat", "/tmp/alive"], "periodSeconds": 1, "failureThreshold": 2}},
    )
    flaky = spec(  # ready, then not: degraded, and not restarted (readiness decides traffic, not life)
        image,
        "touch /tmp/ready; sleep 4; rm /tmp/ready; sleep 3600",
        probes={"readiness": {"exec": ["cat", "/tmp/ready"], "periodSeconds": 1}},
    )

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("web", slow_http), ("tcp", tcp), ("hung", hung), ("flaky", flaky)))
        web, _ = await until(rt, "web", lambda i, _: i.phase == "Running")
        assert not web.ready  # httpd is not listening yet
        await until(rt, "web", lambda i, _: i.ready)
        await until(rt, "tcp", lambda i, _: i.ready)
        await until(rt, "flaky", lambda i, _: i.ready and i.phase == "Running")
        hung_now, _ = await until(rt, "hung", lambda i, _: i.restarts >= 1, timeout=40)
        assert hung_now.reason is not None and hung_now.reason.startswith("liveness probe failed 2 times")
        flaky_now, _ = await until(rt, "flaky", lambda i, _: i.phase == "Degraded", timeout=20)
        assert not flaky_now.ready and flaky_now.restarts == 0
        assert flaky_now.reason is not None and flaky_now.reason.startswith("readiness probe failing")
        for name in ("web", "tcp", "hung", "flaky"):
            await rt.stop_instance(name)
        await rt.shutdown()

    asyncio.run(go())


def test_a_dependent_starts_once_what_it_needs_runs_on_the_dpu(tmp_path: Path, image: dict[str, str]) -> None:
    base = spec(image, "echo base up; sleep 3600")
    app = spec(image, "echo app up; sleep 3600", dependsOn=[{"service": "base"}])

    async def go() -> None:
        rt = runtime(tmp_path)
        want = desired(("app", app), ("base", base))
        assert want.instances[0].after == ["base"]
        await rt.converge(want)
        report = {i.service: i for i in rt.report().instances}
        assert report["app"].phase == "Pending"
        assert report["app"].reason == "waiting for base to run on this DPU"
        await until(rt, "base", lambda i, _: i.phase == "Running")
        assert rt.instances["app"].task is None  # not started before the next pass
        await rt.converge(want)
        await until(rt, "app", lambda i, lines: i.phase == "Running" and "app up" in lines)
        for name in ("app", "base"):
            await rt.stop_instance(name)
        await rt.shutdown()

    asyncio.run(go())


def test_a_bad_artifact_is_reported_and_never_run(tmp_path: Path, image: dict[str, str]) -> None:
    wrong = spec(image, "sleep 1")
    wrong.artifact.ociArchive.sha256 = "0" * 64  # type: ignore[union-attr]
    registry = DPUServiceSpec.model_validate(
        {
            "artifact": {"image": {"reference": "registry.example/app@sha256:" + "1" * 64}},
            "placement": {"mode": "EveryDPU"},
        }
    )

    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("wrong", wrong), ("registry", registry)))
        bad, _ = await until(rt, "wrong", lambda i, _: i.phase == "Failed")
        assert bad.reason is not None and image["sha256"] in bad.reason and "0" * 64 in bad.reason
        other, _ = await until(rt, "registry", lambda i, _: i.phase == "Failed")
        assert other.reason is not None and other.reason.endswith(
            "no URL to fetch it from"
        )  # the control plane offered none
        assert rt.containers() == {}
        assert not (tmp_path / "services" / "artifacts" / ("0" * 64)).exists()
        for name in ("wrong", "registry"):
            await rt.stop_instance(name)
        await rt.shutdown()

    asyncio.run(go())


def test_agent_restart_adopts_and_power_loss_restores_from_disk(tmp_path: Path, image: dict[str, str]) -> None:
    app = spec(image, "echo started; sleep 3600")

    async def go() -> None:
        first = runtime(tmp_path)
        want = desired(("app", app))
        first.save_desired(want)
        await first.restore()  # no control plane: what is on disk
        await until(first, "app", lambda i, _: i.phase == "Running")
        pid = first.instances["app"].pid
        await first.shutdown()  # the agent stops; its instance does not
        assert pid is not None and os.path.exists(f"/proc/{pid}")

        second = runtime(tmp_path)
        await second.restore()
        adopted, _ = await until(second, "app", lambda i, _: i.phase == "Running")
        assert second.instances["app"].pid == pid and adopted.restarts == 0

        await second.power_lost()  # the DPU loses power: every container is gone
        assert second.containers() == {}
        assert not os.path.exists(f"/proc/{pid}/cmdline") or _zombie(pid)
        await second.restore()  # it boots: the durable set is started again, no control plane needed
        await until(second, "app", lambda i, _: i.phase == "Running")
        assert second.instances["app"].pid != pid
        await second.stop_instance("app")
        await second.shutdown()

    asyncio.run(go())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_exec_runs_in_the_container_cut_at_its_limits_and_stops_a_command_past_its_timeout(
    tmp_path: Path, image: dict[str, str]
) -> None:
    async def go() -> None:
        rt = runtime(tmp_path)
        await rt.converge(desired(("web", spec(image, "echo ready; sleep 3600"))))
        await until(rt, "web", lambda i, lines: i.phase == "Running" and "ready" in lines)

        done = await asyncio.to_thread(
            rt.run_exec, ExecRequest(id="1", service="web", command=["cat", "/proc/sys/kernel/hostname"])
        )
        assert (done.exitCode, done.output, done.truncated, done.error) == (0, "web\n", False, None), done.output
        big = ["/bin/sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo " + "x" * 49 + "; i=$((i+1)); done"]
        done = await asyncio.to_thread(rt.run_exec, ExecRequest(id="2", service="web", command=big))
        assert done.exitCode == 0 and done.truncated and len(done.output) == EXEC_OUTPUT_BYTES

        slow = ExecRequest(id="3", service="web", command=["sleep", "31"], timeoutSeconds=0.5)
        done = await asyncio.to_thread(rt.run_exec, slow)
        assert done.exitCode is None and done.error is not None and "within 0.5s" in done.error
        every = ["/bin/sh", "-c", "cat /proc/[0-9]*/cmdline"]
        listed = await asyncio.to_thread(rt.run_exec, ExecRequest(id="4", service="web", command=every))
        assert (
            "sleep\x003600" in listed.output and "sleep\x0031" not in listed.output
        )  # stopped, not left running in the container

        absent = await asyncio.to_thread(rt.run_exec, ExecRequest(id="5", service="db", command=["true"]))
        assert absent.error is not None and "no running instance" in absent.error
        await rt.stop_instance("web")
        await rt.shutdown()

    asyncio.run(go())


def test_the_telemetry_services_plugin_reads_each_running_container_and_sees_it_go(
    tmp_path: Path, image: dict[str, str]
) -> None:
    from dpufleet.agent.telemetry.base import Sources
    from dpufleet.agent.telemetry.services_plugin import ServicesPlugin
    from dpufleet.api.telemetry import TelemetryClass

    async def go() -> None:
        rt = runtime(tmp_path)
        plugin = ServicesPlugin(Sources(root=tmp_path, state=tmp_path, services=rt.instance_reports))
        everything = frozenset(TelemetryClass)
        assert list(plugin.collect(everything, 1)) == []  # nothing placed yet
        web = spec(image, "echo ready; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 3600",
                   resources={"memoryMiB": 32})  # fmt: skip
        await rt.converge(desired(("web", web)))
        await until(rt, "web", lambda i, lines: i.phase == "Running" and "ready" in lines)
        samples = {(s.name, s.attributes.get("state", "")): s for _, s in plugin.collect(everything, 2)}
        assert samples[("container.memory.usage", "")].value > 0  # the container's own cgroup
        assert samples[("dpufleet.service.memory.limit", "")].value == 32 * 1024 * 1024
        assert samples[("container.cpu.time", "")].value > 0
        assert samples[("dpufleet.event.service", "new")].attributes["service.name"] == "web"
        await rt.stop_instance("web")
        gone = [s for _, s in plugin.collect(everything, 3)]
        assert [(s.name, s.attributes["state"]) for s in gone] == [("dpufleet.event.service", "removed")]
        await rt.shutdown()

    asyncio.run(go())
