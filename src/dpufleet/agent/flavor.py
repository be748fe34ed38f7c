"""The DPU agent applies its DPU's flavor to the OS it runs on, keeps it applied, and reports it.

Every `interval` the agent asks the control plane for the flavor provisioning applied (`GET
/agent/v1/flavor`, mTLS), applies it under its root (``/`` on a DPU, the emulated OS root in the
emulator) through the kernel's and the distribution's own interfaces, and reports (`POST .../status`):

- ``sysctl``: written to ``/proc/sys/<key with dots as slashes>`` now, and to
  ``/etc/sysctl.d/90-dpufleet-flavor.conf`` for the boots to come. A key the kernel lacks is a problem.
- ``configFiles``: ``override`` makes the file exactly the content, ``append`` makes sure it holds it;
  with the mode asked. A path that leaves the root (``..``) is refused.
- ``hugepages``: ``/sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages``, read back (the kernel
  may give fewer than asked); a size the kernel does not offer is a problem.
- ``kernelParameters``: ``/etc/default/grub.d/90-dpufleet-flavor.cfg``; each one not on
  ``/proc/cmdline`` yet is *pending reboot*.
- ``reservedResources.cpus``: the OS's own processes are held to the first N cores
  (``CPUAffinity=`` in ``/etc/systemd/system.conf.d/90-dpufleet-flavor.conf``), pending until PID 1
  runs with it (``Cpus_allowed_list`` of ``/proc/1/status``). ``memoryMiB`` is the scheduler's to keep
  (DPU status.allocatable), not the OS's.

Once an item held, a later pass that finds it changed writes it again and reports the drift it undid
(not after a boot, which resets /proc/sys and the hugepages: ``/proc/sys/kernel/random/boot_id`` tells)
(a Warning Event FlavorDrift on the DPU). What was applied is kept in ``flavor.json`` in the state
dir, with the flavor itself: after a reboot the agent applies it again before the control plane answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..api.agent_flavor import DesiredFlavor, FlavorRepair, FlavorReport
from ..api.kinds import DPUFlavorSpec

log = logging.getLogger(__name__)

FLAVOR_PATH = "/agent/v1/flavor"
STATE_FILE = "flavor.json"
BOOT_ID = "proc/sys/kernel/random/boot_id"  # the kernel's id of this boot
SYSCTL_FILE = "etc/sysctl.d/90-dpufleet-flavor.conf"
GRUB_FILE = "etc/default/grub.d/90-dpufleet-flavor.cfg"
SYSTEMD_FILE = "etc/systemd/system.conf.d/90-dpufleet-flavor.conf"
REPORT_EVERY = 600.0  # an unchanged report is sent again this often (a heartbeat of the flavor's state)
HUGEPAGE_KB = {"64Ki": 64, "2Mi": 2048, "512Mi": 524288, "1Gi": 1048576}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _same(a: str | None, b: str) -> bool:
    """sysctl values compare as the kernel prints them: whitespace-separated fields."""
    return a is not None and a.split() == b.split()


def _cpu_list(cpus: int) -> str:
    return "0" if cpus == 1 else f"0-{cpus - 1}"


@dataclass
class _Pass:
    """One pass's findings; `held` is what held before this pass (drift is a change to one of those)."""

    held: set[str]
    now_held: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    repairs: list[FlavorRepair] = field(default_factory=list)

    def wrote(self, item: str, found: str | None) -> None:
        """`item` was found `found` and written: drift when it had held before."""
        if item in self.held:
            self.repairs.append(FlavorRepair(item=item, found="nothing" if found is None else found.strip()[:500]))


class FlavorApplier:
    """Applies one flavor spec under `root`; what held is remembered across passes (for drift)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, absolute: str) -> Path | None:
        """`absolute` under the root; None when it would leave it."""
        parts = Path(absolute).parts[1:]
        if not parts or ".." in parts:
            return None
        return self.root.joinpath(*parts)

    def apply(self, spec: DPUFlavorSpec, held: set[str], previous_files: list[str]) -> tuple[_Pass, list[str]]:
        """Make the OS carry `spec`; returns the pass and the config files this flavor owns now."""
        run = _Pass(held=held)
        self._sysctl(spec, run)
        files = self._files(spec, run, previous_files)
        self._hugepages(spec, run)
        self._kernel(spec, run)
        self._cores(spec, run)
        return run, files

    def _managed(self, relpath: str, content: str | None, item: str, run: _Pass) -> None:
        """A file the agent owns: exactly `content`, or absent when None."""
        path = self.root / relpath
        found = _read(path)
        if content is None:
            if found is not None:
                path.unlink()
            return
        if found != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            run.wrote(item, found)
        run.now_held.add(item)

    def _sysctl(self, spec: DPUFlavorSpec, run: _Pass) -> None:
        for key, value in sorted(spec.sysctl.items()):
            item = f"sysctl {key}"
            path = self.root / "proc/sys" / key.replace(".", "/")
            found = None if "/" in key or "" in key.split(".") else _read(path)
            if found is None:
                run.problems.append(f"{item}: no such key on this kernel ({path})")
                continue
            if not _same(found, value):
                try:
                    path.write_text(value + "\n")
                except OSError as exc:
                    run.problems.append(f"{item}: cannot write {value!r}: {exc.strerror or exc}")
                    continue
                run.wrote(item, found)
                if not _same(_read(path), value):
                    run.problems.append(f"{item}: the kernel kept {(_read(path) or '').strip()!r}, not {value!r}")
                    continue
            run.now_held.add(item)
        lines = "".join(f"{k} = {v}\n" for k, v in sorted(spec.sysctl.items()))
        self._managed(SYSCTL_FILE, lines or None, f"file /{SYSCTL_FILE}", run)

    def _files(self, spec: DPUFlavorSpec, run: _Pass, previous: list[str]) -> list[str]:
        owned: list[str] = []
        for entry in spec.configFiles:
            item = f"file {entry.path}"
            path = self.path(entry.path)
            if path is None:
                run.problems.append(f"{item}: the path must stay inside the DPU's root (no '..')")
                continue
            found = _read(path)
            if entry.operation == "override":
                want = entry.content
                owned.append(entry.path)
            elif found and entry.content in found:
                want = found
            else:
                want = (found or "") + ("" if not found or found.endswith("\n") else "\n") + entry.content
            mode = int(entry.mode, 8)
            try:
                if found != want:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(want)
                    run.wrote(item, found)
                if path.stat().st_mode & 0o7777 != mode:
                    before = oct(path.stat().st_mode & 0o7777)
                    path.chmod(mode)
                    run.wrote(f"{item} mode", before)
            except OSError as exc:
                run.problems.append(f"{item}: {exc.strerror or exc}")
                continue
            run.now_held.update({item, f"{item} mode"})
        for gone in sorted(set(previous) - set(owned)):  # files an earlier version of the flavor owned
            path = self.path(gone)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return owned

    def _hugepages(self, spec: DPUFlavorSpec, run: _Pass) -> None:
        for pages in spec.hugepages:
            item = f"hugepages {pages.pageSize}"
            path = self.root / f"sys/kernel/mm/hugepages/hugepages-{HUGEPAGE_KB[pages.pageSize]}kB/nr_hugepages"
            found = _read(path)
            if found is None:
                run.problems.append(f"{item}: this kernel offers no pages of that size")
                continue
            if found.strip() != str(pages.count):
                try:
                    path.write_text(f"{pages.count}\n")
                except OSError as exc:
                    run.problems.append(f"{item}: {exc.strerror or exc}")
                    continue
                run.wrote(item, found)
                got = (_read(path) or "0").strip()
                if got != str(pages.count):
                    run.problems.append(f"{item}: the kernel gave {got} of the {pages.count} pages asked")
                    continue
            run.now_held.add(item)

    def _kernel(self, spec: DPUFlavorSpec, run: _Pass) -> None:
        params = spec.kernelParameters
        content = f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {" ".join(params)}"\n' if params else None
        before = _read(self.root / GRUB_FILE)
        self._managed(GRUB_FILE, content, f"file /{GRUB_FILE}", run)
        if before != content and self.root == Path("/") and shutil.which("update-grub"):
            done = subprocess.run(["update-grub"], capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                run.problems.append(f"kernelParameters: update-grub failed: {done.stderr.strip()[-500:]}")
        running = (_read(self.root / "proc/cmdline") or "").split()
        run.pending.extend(p for p in params if p not in running)

    def _cores(self, spec: DPUFlavorSpec, run: _Pass) -> None:
        cpus = spec.reservedResources.cpus
        content = f"[Manager]\nCPUAffinity={_cpu_list(cpus)}\n" if cpus else None
        self._managed(SYSTEMD_FILE, content, f"file /{SYSTEMD_FILE}", run)
        if not cpus:
            return
        status = _read(self.root / "proc/1/status") or ""
        allowed = next(
            (ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith("Cpus_allowed_list:")), None
        )
        if allowed != _cpu_list(cpus):
            run.pending.append(f"CPUAffinity={_cpu_list(cpus)}")


@dataclass
class FlavorConfig:
    root: Path
    state_dir: Path
    interval: float = 10.0  # how often the OS is checked against the flavor (local reads, no request)
    refresh: float = 60.0  # how often the control plane is asked for the flavor (an edited flavor shows then)


@dataclass
class FlavorReconciler:
    config: FlavorConfig
    server: str
    http: Callable[[], httpx.AsyncClient]
    desired: DesiredFlavor | None = None
    repairs_made: int = 0
    _last_sent: tuple[Any, float] | None = None
    _next_fetch: float = 0.0

    def __post_init__(self) -> None:
        self.applier = FlavorApplier(self.config.root)
        self.state = self._load()
        if self.state.get("desired"):
            with contextlib.suppress(ValueError):
                self.desired = DesiredFlavor.model_validate(
                    self.state["desired"]
                )  # applied again before the server answers

    @property
    def _state_path(self) -> Path:
        return self.config.state_dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            loaded = json.loads(self._state_path.read_text())
            return loaded if isinstance(loaded, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def _save(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, sort_keys=True))
        os.replace(tmp, self._state_path)

    async def fetch(self) -> DesiredFlavor:
        resp = await self.http().get(self.server + FLAVOR_PATH)
        if resp.status_code >= 400:
            raise RuntimeError(
                f"the control plane refused the flavor request: HTTP {resp.status_code} {resp.text[:300]}"
            )
        return DesiredFlavor.model_validate(resp.json())

    def converge(self, desired: DesiredFlavor) -> FlavorReport | None:
        """Apply the flavor; None when there is none to apply (no flavor, or one deleted since)."""
        if desired.spec is None:
            return None
        same = self.state.get("name") == desired.name and self.state.get("resourceVersion") == desired.resourceVersion
        held = set(self.state.get("held") or []) if same else set()
        boot = (_read(self.config.root / BOOT_ID) or "").strip()
        if boot != self.state.get("boot"):  # a boot resets /proc/sys and the hugepage pools: that is not drift
            held = {item for item in held if item.startswith("file ")}
        run, files = self.applier.apply(desired.spec, held, list(self.state.get("files") or []))
        self.state = {
            "name": desired.name,
            "resourceVersion": desired.resourceVersion,
            "held": sorted(run.now_held),
            "files": files,
            "boot": boot,
            "desired": desired.model_dump(mode="json"),
        }
        self._save()
        return FlavorReport(
            name=desired.name,
            resourceVersion=desired.resourceVersion,
            applied=not run.problems,
            problems=run.problems,
            pendingReboot=run.pending,
            repairs=run.repairs,
        )

    async def send(self, report: FlavorReport, now: float) -> None:
        key = report.model_dump(exclude={"repairs"})
        if not report.repairs and self._last_sent is not None:
            last, at = self._last_sent
            if last == key and now - at < REPORT_EVERY:
                return
        resp = await self.http().post(self.server + FLAVOR_PATH + "/status", json=report.model_dump())
        if resp.status_code >= 400:
            raise RuntimeError(
                f"the control plane refused the flavor status: HTTP {resp.status_code} {resp.text[:300]}"
            )
        self._last_sent = (key, now)

    async def once(self) -> FlavorReport | None:
        """One pass: read the desired flavor (else keep the last one), apply it, report."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_fetch:
            try:
                self.desired = await self.fetch()
                self._next_fetch = loop.time() + self.config.refresh
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                log.warning("flavor: cannot read the desired flavor (%s); keeping the last one", exc)
        if self.desired is None:
            return None
        report = await asyncio.to_thread(self.converge, self.desired)
        if report is None:
            return None
        self.repairs_made += len(report.repairs)
        for repair in report.repairs:
            log.warning("flavor drift undone: %s was %s", repair.item, repair.found)
        try:
            await self.send(report, loop.time())
        except (httpx.HTTPError, RuntimeError) as exc:
            log.warning("flavor: cannot send the status (%s)", exc)
            self._last_sent = None
        return report

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.once()
            except OSError as exc:
                log.warning("flavor: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval)
