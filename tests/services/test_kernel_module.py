"""A kernelModule service on the DPU's runtime: fetched and digest-checked like any artifact, loaded with
insmod (its args as the module's parameters), loaded again if it is unloaded behind the runtime's back,
unloaded when it leaves the DPU; one that needsReboot loads on the next boot. The module is a real ELF
object built by the C compiler; the kernel is the emulated DPU's (dpufleet.sim.kernel over its OS root),
since no DPU kernel runs here."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpufleet.agent.services import ServiceRuntime, ServicesConfig
from dpufleet.api.agent_services import DesiredServices
from dpufleet.api.kinds import DPUServiceSpec
from dpufleet.services.desired import desired_instance
from dpufleet.sim import kernel

pytestmark = [pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the module with")]
MODULE_C = """
static const char name[] __attribute__((section(".modinfo"), used, aligned(1))) = "name=dpuecho";
static const char license[] __attribute__((section(".modinfo"), used, aligned(1))) = "license=GPL";
int init_module(void) { return 0; }
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    where = tmp_path_factory.mktemp("modules")
    (where / "dpuecho.c").write_text(MODULE_C)
    subprocess.run(["cc", "-c", "-o", str(where / "dpuecho.ko"), str(where / "dpuecho.c")], check=True)
    (where / "notamodule.ko").write_text("#!/bin/sh\necho not an ELF object\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(where)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    digest = {n: hashlib.sha256((where / n).read_bytes()).hexdigest() for n in ("dpuecho.ko", "notamodule.ko")}
    try:
        yield {"base": base, **digest}
    finally:
        server.shutdown()
        server.server_close()


def module(served: dict[str, str], file: str = "dpuecho.ko", **more: Any) -> DPUServiceSpec:
    sha = more.pop("sha256", served[file])
    return DPUServiceSpec.model_validate(
        {
            "artifact": {"kernelModule": {"url": f"{served['base']}/{file}", "sha256": sha, "name": "dpuecho", **more}},
            "placement": {"mode": "EveryDPU"},
            "config": {"args": ["queues=8", "mode=fast"]},
        }
    )


def runtime(tmp_path: Path) -> ServiceRuntime:
    root = tmp_path / "osroot"
    (root / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
    if not (root / "proc/sys/kernel/random/boot_id").exists():
        boot(root)
    prefix = kernel.emulated_kernel(root)
    config = ServicesConfig(
        tmp_path / "services", dpu="dpu-km", interval=0.2, insmod=[*prefix, "insmod"], rmmod=[*prefix, "rmmod"],
        os_root=root,
    )  # fmt: skip
    return ServiceRuntime(config, "http://127.0.0.1:9", lambda: None)  # type: ignore[arg-type,return-value]


def boot(root: Path) -> None:
    (root / "proc/sys/kernel/random/boot_id").write_text(str(uuid.uuid4()) + "\n")
    kernel.boot(root)


def desired(*specs: DPUServiceSpec) -> DesiredServices:
    return DesiredServices(
        dpu="dpu-km", instances=[desired_instance(f"km{i}", f"km{i}/dpu-km", s) for i, s in enumerate(specs)]
    )


async def until(rt: ServiceRuntime, check: Any, service: str = "km0", timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        inst = next((i for i in rt.report().instances if i.service == service), None)
        if inst is not None and check(inst):
            return inst
        if time.monotonic() > deadline:
            raise AssertionError(f"{service}: never got there: {inst}")
        await asyncio.sleep(0.1)


def test_a_module_is_loaded_with_its_parameters_kept_loaded_and_unloaded(
    tmp_path: Path, served: dict[str, str]
) -> None:
    async def go() -> None:
        rt = runtime(tmp_path)
        root = rt.config.os_root
        await rt.converge(desired(module(served)))
        inst = await until(rt, lambda i: i.phase == "Running")
        assert inst.ready and inst.restarts == 0
        assert "dpuecho" in kernel.loaded(root)
        assert (root / "sys/module/dpuecho/parameters/queues").read_text() == "8\n"
        assert (root / "sys/module/dpuecho/parameters/mode").read_text() == "fast\n"

        assert kernel.rmmod(root, "dpuecho") is None  # unloaded behind the runtime's back
        inst = await until(rt, lambda i: i.phase == "Running" and i.restarts == 1, timeout=20)
        assert "dpuecho" in kernel.loaded(root)

        await rt.converge(desired())  # the service leaves the DPU
        assert "dpuecho" not in kernel.loaded(root) and not (root / "sys/module/dpuecho").exists()
        assert rt.report().instances == []
        await rt.shutdown()

    asyncio.run(go())


def test_a_bad_or_tampered_module_is_refused_and_never_loaded(tmp_path: Path, served: dict[str, str]) -> None:
    async def go() -> None:
        rt = runtime(tmp_path)
        bad = module(served, "notamodule.ko")
        tampered = module(served, sha256="0" * 64)
        await rt.converge(desired(bad, tampered))
        first = await until(rt, lambda i: i.phase == "Failed", "km0")
        assert first.reason is not None and "Invalid module format" in first.reason
        second = await until(rt, lambda i: i.phase == "Failed", "km1")
        assert second.reason is not None and "0" * 64 in second.reason and served["dpuecho.ko"] in second.reason
        assert kernel.loaded(rt.config.os_root) == {}
        await rt.converge(desired())
        await rt.shutdown()

    asyncio.run(go())


def test_a_module_that_needs_a_reboot_loads_on_the_next_boot(tmp_path: Path, served: dict[str, str]) -> None:
    async def go() -> None:
        rt = runtime(tmp_path)
        want = desired(module(served, needsReboot=True))
        rt.save_desired(want)
        await rt.converge(want)
        inst = await until(rt, lambda i: i.phase == "Pending" and "loads on the DPU's next boot" in (i.reason or ""))
        await asyncio.sleep(2.5)  # it stays so: no load in this boot
        assert kernel.loaded(rt.config.os_root) == {}
        await rt.power_lost()
        boot(rt.config.os_root)

        after = runtime(tmp_path)  # the DPU is up again: the agent starts from what it kept
        await after.restore()
        inst = await until(after, lambda i: i.phase == "Running")
        assert inst.ready and "dpuecho" in kernel.loaded(after.config.os_root)
        await after.converge(desired())
        assert kernel.loaded(after.config.os_root) == {}
        await after.shutdown()

    asyncio.run(go())


def test_the_emulated_kernel_refuses_what_a_kernel_refuses(tmp_path: Path, served: dict[str, str]) -> None:
    root = tmp_path / "root"
    boot_dir = root / "proc/sys/kernel/random"
    boot_dir.mkdir(parents=True)
    ko = tmp_path / "m.ko"
    with urllib.request.urlopen(f"{served['base']}/dpuecho.ko") as resp:
        ko.write_bytes(resp.read())
    assert kernel.insmod(root, ko, ["bad param"]) is not None
    assert kernel.insmod(root, ko, []) is None
    assert "File exists" in (kernel.insmod(root, ko, []) or "")
    assert "not currently loaded" in (kernel.rmmod(root, "other") or "")
    assert kernel.main(["--root", str(root), "rmmod", "dpuecho"]) == 0
    assert kernel.loaded(root) == {}
