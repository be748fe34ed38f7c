"""The agent's service runtime: the instances the control plane placed on this DPU, run as OCI containers.

Every `interval` seconds it asks the control plane what this DPU should run (`GET /agent/v1/services`),
keeps that answer on disk (`<state>/services/desired.json`), and converges:

- **pull**: an `ociArchive` artifact (or an `image`: the archive of that digest in the control plane's
  repository, by a signed URL; or a native `bundle`: a tar of a root filesystem) is downloaded once,
  checked against its sha256 (a mismatch is a Failed instance naming both digests, never a start) and
  kept by digest;
- **bundle**: the archive's OCI layout is unpacked with umoci (a native bundle's root filesystem is
  copied, with `runc spec` as its base) into a runtime bundle per revision, whose
  `config.json` is then made ours: the service's args and env, its memory and CPU limits as cgroup
  limits (`cgroupsPath /dpufleet/<dpu>/<service>`), a read-only root with tmpfs /tmp and /run, no new
  privileges, a minimal capability set, a seccomp filter refusing mount/reboot/module/ptrace/bpf/kexec
  system calls, its own network namespace holding only loopback, and each config file bind-mounted
  read-only at its path. A privileged service (admin-only) gets the host's network, all capabilities,
  no seccomp filter and a writable root;
- **run**: `runc run` in the foreground per instance (its exit status is the container's), stdout and
  stderr appended to `<state>/services/logs/<service>.log` (cut when it passes LOG_LIMIT_BYTES);
- **order**: an instance whose service depends on another on the same DPU (`dependsOn`, scope
  SameDPU) starts once that one runs here (Pending, "waiting for X to run on this DPU", until then);
- **restart** per restartPolicy (Always / OnFailure / Never) with a backoff doubling from 1 s to 60 s,
  reset once an instance stays up a minute; a liveness probe failing `failureThreshold` times in a row
  kills the instance (a restart). Readiness: an instance with a readiness probe is ready while it
  passes; one without is ready while it runs. Probes: exec (`runc exec`), tcp and http (from inside the
  instance's network namespace, through nsenter);
- **config only**: a change of the config files alone (configRevision; only for a service that
  declares `config.reload`, otherwise the files are part of the revision) rewrites the mounted files
  in place and reloads the instance as declared (a signal, or an HTTP POST from inside its network
  namespace): no restart. A failed reload restarts it (SIGTERM, SIGKILL after the grace period);
- **trust**: with a trust store of its own (`trusted_publishers`), a signed artifact is verified under
  it (signature, publisher, expiry, the manifest's digest and size) before it is fetched; with
  `require_signed` an unsigned one never runs;
- **report**: per instance phase (Pending, Pulling, Starting, Running, Failed, Succeeded), ready,
  restarts, exit code, reason, memory use and limit, and the last lines of its log (`POST
  /agent/v1/services/status`); an unchanged report is sent again every REPORT_EVERY seconds.

After the agent restarts it adopts the containers still running at the revision it wants (`runc list`)
and deletes the rest; after the DPU reboots (no containers) it starts every instance of the durable
desired set at once, without waiting for the control plane.

A `kernelModule` artifact is fetched and checked the same way and loaded with `insmod` (its args are
the module's parameters), Running while /proc/modules lists it, loaded again per restartPolicy if it
is unloaded behind the runtime's back, and unloaded (`rmmod`) when the service leaves the DPU. One that
`needsReboot` is loaded on the first boot after it was placed (Pending until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..api.agent_services import (
    EXEC_OUTPUT_BYTES,
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    DesiredInstance,
    DesiredServices,
    ExecRequest,
    ExecResult,
    InstanceLogs,
    InstanceReport,
    ServiceReport,
)
from ..api.kinds.services import Probe, StateExport
from ..crypto.signing import (
    Component,
    ManifestRefused,
    PublisherClass,
    TrustPolicy,
    load_public_key,
    parse_signed_manifest,
    verify_manifest,
)
from .host_relay import relay_artifact_url
from .sandbox import (
    SandboxError,
    close_all,
    delete_netns,
    ensure_netns,
    listening_sockets,
    netns_name,
    netns_path,
    take_sockets,
)

log = logging.getLogger(__name__)
SERVICES_PATH = "/agent/v1/services"
REPORT_EVERY = 30.0
LOG_LIMIT_BYTES = 4 * 1024 * 1024
DPU_PROJECT = "dpu"  # the trust policy's one project on a DPU
BACKOFF_MAX = 60.0
STEADY_SECONDS = 60.0  # up this long: the next crash restarts after 1 s again
CONTAINER_PREFIX = "dpufleet-"
MODULE_FILE = "module.ko"
RESTRICTED_UID = 65534  # a restricted sandbox's user and group (nobody/nogroup)
RESTRICTED_PIDS = 64
MODULE_WATCH_SECONDS = 2.0  # how often a loaded module is checked to be still loaded
HANDOFF_RETRY_SECONDS = 10.0  # a failed state handoff is tried again after this long (the old instance serves)
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_NET_BIND_SERVICE",
]
ALL_CAPS = [
    *DEFAULT_CAPS,
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SYS_ADMIN",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_IPC_LOCK",
    "CAP_SYS_PTRACE",
    "CAP_MKNOD",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_TIME",
    "CAP_NET_BROADCAST",
]
REFUSED_SYSCALLS = [
    "mount",
    "umount2",
    "reboot",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "ptrace",
    "bpf",
    "swapon",
    "swapoff",
    "perf_event_open",
    "open_by_handle_at",
    "keyctl",
    "add_key",
    "request_key",
    "settimeofday",
    "clock_settime",
]
_PROBE_SCRIPT = """
import socket, sys, urllib.request
kind, port, path, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
if kind == "tcp":
    socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
else:
    data, method = (b"", "POST") if kind == "post" else (None, "GET")
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    code = urllib.request.urlopen(request, timeout=timeout).status
    sys.exit(0 if 200 <= code < 400 else 1)
"""


class RuntimeUnavailable(RuntimeError):
    """runc or umoci is not installed on this DPU."""


@dataclass
class ServicesConfig:
    """Where the runtime keeps its state, and the tools it runs."""

    state_dir: Path  # <agent state>/services
    dpu: str = "dpu"  # the cgroup parent's name (/dpufleet/<dpu>/...)
    query: str = ""  # a host agent's runtime for one of its DPUs: "?dpu=NAME" on every request
    interval: float = 2.0
    runc: str = "runc"
    umoci: str = "umoci"
    nsenter: str = "nsenter"
    stop_grace: float = 10.0  # SIGTERM, then this long, then SIGKILL
    # The publishers this DPU trusts (a JSON list of {name, class, publicKey}, placed on the DPU at
    # provisioning): a signed artifact must verify under them before it runs; with require_signed an
    # unsigned one never runs. None: the control plane's check alone (the digest is still checked).
    trusted_publishers: Path | None = None
    require_signed: bool = False
    # A kernelModule artifact: the tools that load and unload it, and the kernel's list of what is loaded
    # (the emulated DPU gives its own, over its emulated OS root: dpufleet.sim.kernel).
    insmod: list[str] = field(default_factory=lambda: ["insmod"])
    rmmod: list[str] = field(default_factory=lambda: ["rmmod"])
    os_root: Path = Path("/")  # proc/modules and proc/sys/kernel/random/boot_id are read under it
    host_relay: str | None = None  # the host's relay (agent/host_relay.py): artifacts when no route to them


def _own(path: Path, desired: DesiredInstance) -> None:
    """A restricted instance runs as nobody: what it must read or write of its own is made nobody's."""
    if desired.sandbox == "restricted" and not desired.privileged:
        with contextlib.suppress(PermissionError):  # (an unprivileged agent, in tests: nothing to give away)
            os.chown(path, RESTRICTED_UID, RESTRICTED_UID)


def online_cpus(path: Path = Path("/sys/devices/system/cpu/online")) -> list[int]:
    """The cores this machine runs (the kernel's cpulist: `0-3,8`); [0] if it cannot tell."""
    try:
        return parse_cpulist(path.read_text()) or [0]
    except (OSError, ValueError):
        return [0]


def parse_cpulist(text: str) -> list[int]:
    cores: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return sorted(cores)


def cpulist(cores: Iterable[int]) -> str:
    """Cores in the kernel's cpulist form: 0-3,8."""
    ordered = sorted(set(cores))
    runs: list[str] = []
    for index, core in enumerate(ordered):
        if index and core == ordered[index - 1] + 1:
            start = runs[-1].split("-")[0]
            runs[-1] = f"{start}-{core}"
        else:
            runs.append(str(core))
    return ",".join(runs)


def _said(resp: httpx.Response) -> str:
    """ ": <message>" of a JSON refusal (the host relay's), else nothing."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    return f": {body['message']}" if isinstance(body, dict) and isinstance(body.get("message"), str) else ""


def _bare(url: str) -> str:
    """A URL as said in a reason: without its query (a signed URL's signature stays out of statuses)."""
    return url.partition("?")[0]


def load_trust(path: Path) -> TrustPolicy:
    """The DPU's own trust store: ValueError naming the file and the entry when it cannot be read."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON list of publishers: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{name, class, publicKey}}")
    policy = TrustPolicy()
    for i, entry in enumerate(entries):
        try:
            klass = PublisherClass(str(entry["class"]))
            policy.trust(str(entry["name"]), klass, load_public_key(str(entry["publicKey"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from None
    policy.allow(DPU_PROJECT, *PublisherClass)  # which classes a project runs is the control plane's rule
    return policy


# --- the bundle's config.json (pure) ----------------------------------------------------------------------------


def container_id(service: str) -> str:
    return CONTAINER_PREFIX + service


def instance_ids(desired: DesiredInstance, dpu: str) -> tuple[str, str]:
    """(container id, cgroup path) of an instance. A service upgraded by a state handoff runs two instances
    for a moment, the old and the next: its ids carry the revision."""
    name = desired.service if desired.handoff is None else f"{desired.service}.{desired.revision[:12]}"
    return CONTAINER_PREFIX + name, f"dpufleet/{dpu}/{name}"


@dataclass(frozen=True)
class Sandbox:
    """What a handoff service's instance joins: its network namespace, the held sockets (fds 3..), and the
    directory of its own control socket and imported state (mounted at HANDOFF_MOUNT)."""

    netns: Path
    listen_fds: int
    handoff_dir: Path
    state_file: bool


HANDOFF_MOUNT = "/run/dpufleet/handoff"


def shape_config(
    base: dict[str, Any],
    desired: DesiredInstance,
    dpu: str,
    files: list[tuple[Path, str]],
    sandbox: Sandbox | None = None,
    cpus: str | None = None,
) -> dict[str, Any]:
    """The runtime spec of one instance: the image's config.json with the service's process, limits,
    isolation and mounts. `files` are (host path, path in the container) of the config files; `sandbox`,
    for a handoff service, the namespace it joins and what it is handed; `cpus`, the cpuset it runs on (its
    pinned cores, or the cores no instance has pinned)."""
    config = json.loads(json.dumps(base))
    process = config.setdefault("process", {})
    process["terminal"] = False
    if desired.args:
        process["args"] = list(desired.args)
    if not process.get("args"):
        raise ValueError("the image names no command and the service gives no args")
    ours = dict(desired.env)
    if sandbox is not None:
        ours["LISTEN_FDS"] = str(sandbox.listen_fds)
        ours["DPUFLEET_HANDOFF_DIR"] = HANDOFF_MOUNT
        if sandbox.state_file:
            ours["DPUFLEET_STATE_FILE"] = f"{HANDOFF_MOUNT}/state"
    env = [e for e in process.get("env") or [] if e.split("=", 1)[0] not in ours]
    process["env"] = [*env, *(f"{k}={v}" for k, v in sorted(ours.items()))]
    process["noNewPrivileges"] = not desired.privileged
    restricted = desired.sandbox == "restricted" and not desired.privileged
    caps = ALL_CAPS if desired.privileged else () if restricted else DEFAULT_CAPS
    sets = ("bounding", "effective", "permitted", *(("inheritable", "ambient") if restricted else ()))
    process["capabilities"] = {k: list(caps) for k in sets}
    if restricted:  # the project's policy for its publisher's class: nobody, with nothing
        process["user"] = {"uid": RESTRICTED_UID, "gid": RESTRICTED_UID, "additionalGids": []}
    process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
    config["hostname"] = desired.service
    config["root"] = {"path": "rootfs", "readonly": not desired.privileged}
    linux = config.setdefault("linux", {})
    linux["cgroupsPath"] = "/" + instance_ids(desired, dpu)[1]
    memory = desired.resources.memoryMiB * 1024 * 1024
    linux["resources"] = {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": memory, "swap": memory},
        "cpu": {
            "quota": max(1000, desired.resources.charged_millicores * 100),
            "period": 100_000,
            **({"cpus": cpus} if cpus else {}),
        },
        "pids": {"limit": RESTRICTED_PIDS if restricted else 1024},
    }
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if sandbox is not None:  # the service's own namespace, which outlives this container
        namespaces.append({"type": "network", "path": str(sandbox.netns)})
    elif not desired.privileged:
        namespaces.append({"type": "network"})
    if not desired.privileged:
        linux["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": list(REFUSED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        }
    else:
        linux.pop("seccomp", None)
    linux["namespaces"] = namespaces
    mounts = [m for m in config.get("mounts") or [] if m.get("destination") not in ("/tmp", "/run")]
    tmpfs = ["nosuid", "nodev", *(["noexec", f"uid={RESTRICTED_UID}", f"gid={RESTRICTED_UID}"] if restricted else []),
             "size=16m"]  # fmt: skip
    for where in ("/tmp", "/run"):
        mounts.append({"destination": where, "type": "tmpfs", "source": "tmpfs", "options": list(tmpfs)})
    for source, target in files:
        mounts.append({"destination": target, "type": "bind", "source": str(source), "options": ["bind", "ro"]})
    if sandbox is not None:
        mounts.append(
            {
                "destination": HANDOFF_MOUNT,
                "type": "bind",
                "source": str(sandbox.handoff_dir),
                "options": ["bind", "rw", "nosuid", "nodev", "noexec"],
            }
        )
    config["mounts"] = mounts
    annotations = config.setdefault("annotations", {})
    annotations["io.dpufleet.revision"] = desired.runs
    annotations["io.dpufleet.instance"] = desired.instance
    annotations["io.dpufleet.service"] = desired.service
    return config


def next_backoff(previous: float) -> float:
    return min(BACKOFF_MAX, max(1.0, previous * 2))


def tail(path: Path, lines: int = LOG_TAIL_LINES, limit: int = LOG_TAIL_BYTES) -> list[str]:
    """The last `lines` lines of a log, reading at most `limit` bytes from its end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if size > limit and text:
        text = text[1:]  # the first line read is cut
    return text[-lines:]


# --- one instance --------------------------------------------------------------------------------------------


@dataclass
class Instance:
    """What the runtime knows of one instance: what it runs, and how that is going."""

    desired: DesiredInstance
    phase: str = "Pending"
    ready: bool = False
    restarts: int = 0
    exit_code: int | None = None
    reason: str | None = None
    started_at: str | None = None
    pid: int | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    config_revision: str = ""
    probe_failures: dict[str, int] = field(default_factory=dict)
    served: bool = False  # its readiness probe has passed since it last started
    oom_killed: bool = False  # the kernel killed a process of its last run for passing its memory limit
    degraded: str | None = None  # why it is not ready any more, since it was (reported as phase Degraded)
    kill_reason: str | None = None
    up_since: float = 0.0  # monotonic
    cid: str = ""  # its container (instance_ids)
    cgroup: str = ""  # its cgroup, under /sys/fs/cgroup[/<controller>]
    state_file: bool = False  # started with the state its predecessor handed over
    state_from: tuple[str, str] | None = None  # (URL, sha256): a move's state, fetched before it first starts
    exported: StateExport | None = None  # a move: its state went to another DPU's instance; drained since
    prefetch: asyncio.Task[None] | None = None  # a move's new instance: its artifact pulled while it waits
    awaiting_state: bool = False  # ... pulled: the leaving instance may drain now
    cpus: str | None = None  # the cpuset it was started with, or last updated to

    def report(self, memory: tuple[int | None, int | None], cpu_seconds: float | None = None) -> InstanceReport:
        return InstanceReport(
            service=self.desired.service,
            instance=self.desired.instance,
            revision=self.desired.revision,
            configRevision=self.config_revision or None,
            phase="Degraded" if self.phase == "Running" and self.degraded else self.phase,  # type: ignore[arg-type]
            ready=self.ready and not self.stopping and self.exported is None,  # stopping or drained: no more
            restarts=self.restarts,
            exitCode=self.exit_code,
            reason=self.degraded if self.phase == "Running" and self.degraded else self.reason,
            startedAt=self.started_at,
            memoryBytes=memory[0],
            memoryLimitBytes=memory[1],
            cpuSeconds=cpu_seconds,
            stateExport=self.exported,
            awaitingState=self.awaiting_state and self.task is None,
        )


class ServiceRuntime:
    """Converges this DPU's containers to the desired services. Blocking work (runc, umoci, unpacking)
    runs in threads; one asyncio task supervises each instance."""

    def running_pid(self, service: str) -> int | None:
        """The pid of the service's instance while it runs here (its network namespace is /proc/PID/ns/net)."""
        inst = self.instances.get(service)
        if inst is None or inst.phase != "Running" or inst.stopping or inst.desired.privileged:
            return None
        return inst.pid

    def __init__(
        self,
        config: ServicesConfig,
        server: str,
        http: Callable[[], httpx.AsyncClient],
        alive: Callable[[], bool] = lambda: True,
        uplink: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.server = server.rstrip("/")
        self.http = http
        self.alive = alive
        self.uplink = uplink
        self.root = config.state_dir
        self.instances: dict[str, Instance] = {}
        self.desired: DesiredServices | None = None
        self._last_sent: tuple[Any, float] | None = None
        self._pulls: dict[str, asyncio.Lock] = {}
        self._execs: set[asyncio.Task[None]] = set()
        self._sockets: dict[str, dict[int, socket.socket]] = {}  # a handoff service's held sockets, by port
        self._handoffs: dict[str, asyncio.Task[None]] = {}
        self._handoff_retry: dict[str, float] = {}
        self._pinned: set[int] = set()  # the cores the desired set's instances pin
        self._artifacts = httpx.AsyncClient(timeout=60, follow_redirects=True)
        self.trust = load_trust(config.trusted_publishers) if config.trusted_publishers else None

    # paths
    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    def _log_path(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def _bundle(self, desired: DesiredInstance) -> Path:
        return self.root / "bundles" / f"{desired.service}-{desired.revision}"

    def _files_dir(self, desired: DesiredInstance) -> Path:
        return self.root / "files" / instance_ids(desired, self.config.dpu)[0].removeprefix(CONTAINER_PREFIX)

    def _handoff_dir(self, cid: str) -> Path:
        return self.root / "handoff" / cid

    def _instance(self, desired: DesiredInstance) -> Instance:
        cid, cgroup = instance_ids(desired, self.config.dpu)
        return Instance(desired, cid=cid, cgroup=cgroup)

    # --- tools -----------------------------------------------------------------------------------------------

    def check_tools(self) -> None:
        missing = [t for t in (self.config.runc, self.config.umoci) if shutil.which(t) is None]
        if missing:
            raise RuntimeUnavailable(f"{', '.join(missing)} not found: this DPU cannot run services (install them)")

    def _runc(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.config.runc, "--root", str(self.runc_root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def containers(self) -> dict[str, dict[str, Any]]:
        """The containers runc knows under our root: id -> its state."""
        if not self.runc_root.exists():
            return {}
        done = self._runc("list", "--format", "json")
        if done.returncode != 0:
            raise RuntimeError(f"runc list failed: {done.stderr.strip()[:300]}")
        found = json.loads(done.stdout or "null") or []
        return {c["id"]: c for c in found if str(c.get("id", "")).startswith(CONTAINER_PREFIX)}

    def kill_all(self) -> None:
        """Every container of ours gone, and every sandbox (what a power loss does, and what `stop` with
        `--remove` does)."""
        for cid in self.containers():
            self._runc("delete", "--force", cid)
        wanted = [d.service for d in (self.desired.instances if self.desired else []) if d.handoff is not None]
        for service in {*self._sockets, *wanted}:  # and the namespaces of the stateful ones, as a reboot does
            self._drop_sandbox(service)

    # --- desired state, kept on disk -------------------------------------------------------------------------

    def load_desired(self) -> DesiredServices | None:
        path = self.root / "desired.json"
        try:
            return DesiredServices.model_validate_json(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("services: %s is unreadable (%s); waiting for the control plane", path, exc)
            return None

    def save_desired(self, desired: DesiredServices) -> None:
        path = self.root / "desired.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = desired.model_dump_json()
        if path.exists() and path.read_text() == text:
            return
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    async def fetch(self) -> DesiredServices:
        if not self.uplink():
            raise httpx.ConnectError("network is unreachable")
        resp = await self.http().get(self.server + SERVICES_PATH + self.config.query)
        if resp.status_code >= 400:
            raise RuntimeError(f"HTTP {resp.status_code} {resp.text[:300]}")
        return DesiredServices.model_validate(resp.json())

    # --- pull and unpack ----------------------------------------------------------------------------------

    async def pull(self, desired: DesiredInstance) -> Path:
        """The OCI layout (or, for a native bundle, the root filesystem) of the instance's artifact, downloaded
        and checked once per digest."""
        artifact = desired.artifact
        if artifact.image is not None:  # the OCI archive of that digest, from the control plane's repository
            if desired.artifactURL is None:
                raise ValueError(desired.artifactError or f"image {artifact.image.reference}: no URL to fetch it from")
            url, want = desired.artifactURL, artifact.sha256()
        elif artifact.ociArchive is not None:
            url, want = artifact.ociArchive.url, artifact.ociArchive.sha256
        elif artifact.bundle is not None:  # a native process bundle: a tar of its root filesystem
            url, want = artifact.bundle.url, artifact.bundle.sha256
        else:
            assert artifact.kernelModule is not None
            url, want = artifact.kernelModule.url, artifact.kernelModule.sha256
        native = artifact.bundle is not None
        module = artifact.kernelModule is not None
        signed = self.verify(desired)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"artifact URL {url}: only http(s) archives are fetched by this runtime")
        layout = self.root / "artifacts" / want
        lock = self._pulls.setdefault(want, asyncio.Lock())
        async with lock:
            if (layout / ("rootfs" if native else MODULE_FILE if module else "index.json")).exists():
                return layout
            layout.parent.mkdir(parents=True, exist_ok=True)
            part = layout.parent / f"{want}.part"
            got, via = await self._download(url, want, part)
            if got != want:
                part.unlink(missing_ok=True)
                raise ValueError(f"artifact {_bare(url)}{via} has sha256 {got}, the service names {want}: not run")
            if signed is not None and part.stat().st_size != signed.size:
                size = part.stat().st_size
                part.unlink(missing_ok=True)
                raise ValueError(
                    f"artifact {_bare(url)} is {size} bytes, its signed manifest says {signed.size}: not run"
                )
            if module:  # a module is loaded as it is
                layout.mkdir(parents=True, exist_ok=True)
                part.replace(layout / MODULE_FILE)
                return layout
            await asyncio.to_thread(_extract_rootfs if native else _extract, part, layout)
            part.unlink(missing_ok=True)
            return layout

    async def _download(self, url: str, want: str, part: Path) -> tuple[str, str]:
        """The artifact into `part` from the network, or, with no route there and a host relay, through the
        host (agent/host_relay.py); its sha256 and how it came (" through the host relay", or "")."""
        relay = self.config.host_relay
        if self.uplink():
            try:
                return await self._stream(self._artifacts.stream("GET", url), _bare(url), part), ""
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if relay is None:
                    raise
                log.info("artifact %s: no route (%s); asking the host relay", _bare(url), exc)
        elif relay is None:
            raise httpx.ConnectError("network is unreachable")
        assert relay is not None
        relay_url = relay_artifact_url(relay, want, url)
        try:  # not following redirects: the host must not send the DPU's request anywhere else
            request = self._artifacts.stream("GET", relay_url, timeout=600, follow_redirects=False)
            got = await self._stream(request, "the host relay", part)
        except httpx.TransportError as exc:
            raise ValueError(f"artifact {_bare(url)}: no route to it, and the host relay {relay}: {exc}") from None
        log.info("artifact %s: fetched through the host relay %s", _bare(url), relay)
        return got, " (through the host relay)"

    @staticmethod
    async def _stream(request: AbstractAsyncContextManager[httpx.Response], what: str, part: Path) -> str:
        digest = hashlib.sha256()
        async with request as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise ValueError(f"downloading {what} failed: HTTP {resp.status_code}{_said(resp)}")
            with part.open("wb") as out:
                async for chunk in resp.aiter_bytes(1 << 16):
                    digest.update(chunk)
                    out.write(chunk)
        return digest.hexdigest()

    def verify(self, desired: DesiredInstance) -> Component | None:
        """Check the artifact's signed manifest under this DPU's own trust store before anything is fetched:
        the signed component, or None when unsigned and allowed. ValueError says why not."""
        artifact = desired.artifact
        if artifact.signedManifest is None:
            if self.config.require_signed:
                raise ValueError("artifact refused: Unsigned: this DPU runs only signed artifacts")
            return None
        try:
            envelope = parse_signed_manifest(json.dumps(artifact.signedManifest))
            if self.trust is not None:
                verify_manifest(envelope, self.trust, DPU_PROJECT)
            component = envelope.manifest.component("artifact")
        except ManifestRefused as exc:
            raise ValueError(f"artifact refused: {exc.reason}: {exc.message}") from None
        if component.sha256 != artifact.sha256():
            raise ValueError(
                f"artifact refused: DigestMismatch: the artifact is {artifact.sha256()[:16]}..., "
                f"its signed manifest says {component.sha256[:16]}..."
            )
        return component

    def prepare(
        self, desired: DesiredInstance, layout: Path, sandbox: Sandbox | None = None, cpus: str | None = None
    ) -> Path:
        """The instance's runtime bundle (unpacked once per revision) with its config files written."""
        bundle = self._bundle(desired)
        if not (bundle / "rootfs").exists():
            tmp = bundle.with_name(bundle.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            if desired.artifact.bundle is not None:  # its root filesystem, and runc's default spec to shape
                shutil.copytree(layout / "rootfs", tmp / "rootfs", symlinks=True)
                command = [self.config.runc, "spec", "--bundle", str(tmp)]
                what = "making the runtime spec of the bundle"
            else:
                command = [self.config.umoci, "unpack", "--image", f"{layout}:{_ref_name(layout)}", str(tmp)]
                what = "unpacking the OCI image"
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ValueError(f"{what} failed: {done.stderr.strip()[:500]}")
            (tmp / "image-config.json").write_text((tmp / "config.json").read_text())
            shutil.rmtree(bundle, ignore_errors=True)
            tmp.replace(bundle)
        files = self.write_files(desired)
        base = json.loads((bundle / "image-config.json").read_text())
        config = shape_config(base, desired, self.config.dpu, files, sandbox, cpus)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle

    def write_files(self, desired: DesiredInstance) -> list[tuple[Path, str]]:
        """Write the config files where the bundle mounts them from, in place (a bind mount keeps the
        inode: a file replaced by rename would not reach a running instance)."""
        where = self._files_dir(desired)
        where.mkdir(parents=True, exist_ok=True)
        mounts = []
        for index, spec in enumerate(desired.files):
            path = where / f"{index}-{Path(spec.path).name}"
            with path.open("a+") as f:
                f.seek(0)
                f.truncate()
                f.write(spec.content)
            path.chmod(int(spec.mode, 8))
            _own(path, desired)
            mounts.append((path, spec.path))
        return mounts

    # --- a handoff service's sandbox (agent/sandbox.py) ---------------------------------------------------------

    def _sandbox(self, inst: Instance) -> Sandbox:
        """The namespace the instance joins and the sockets it is handed, made or taken back as needed."""
        desired = inst.desired
        assert desired.handoff is not None
        service = desired.service
        netns = ensure_netns(netns_name(self.config.dpu, service))
        held = self._sockets.setdefault(service, {})
        missing = [p for p in desired.handoff.listen if p not in held]
        donor = self.instances.get(service)
        if missing and donor is not None and donor is not inst and donor.pid is not None:
            self._take_sockets(donor)
            missing = [p for p in desired.handoff.listen if p not in held]
        if missing:
            held.update(listening_sockets(netns, missing))
        where = self._handoff_dir(inst.cid)
        where.mkdir(parents=True, exist_ok=True)
        _own(where, desired)  # its control socket and state are made there by the service itself
        if (where / "state").exists():
            _own(where / "state", desired)
        return Sandbox(netns, len(desired.handoff.listen), where, inst.state_file)

    def _take_sockets(self, inst: Instance) -> None:
        """After an agent restart: the sockets a running instance was handed (fds 3..), held again."""
        handoff = inst.desired.handoff
        if handoff is None or inst.pid is None or self._sockets.get(inst.desired.service):
            return
        try:
            taken = take_sockets(inst.pid, list(range(3, 3 + len(handoff.listen))))
        except (SandboxError, OSError) as exc:
            log.warning("service %s: cannot take its listening sockets back: %s", inst.desired.service, exc)
            return
        self._sockets.setdefault(inst.desired.service, {}).update(taken)

    def _held_fds(self, inst: Instance) -> list[int]:
        handoff = inst.desired.handoff
        if handoff is None:
            return []
        held = self._sockets.get(inst.desired.service) or {}
        return [held[p].fileno() for p in handoff.listen if p in held]

    def _drop_sandbox(self, service: str) -> None:
        """The service no longer runs here: its sockets closed, its namespace gone."""
        close_all(self._sockets.pop(service, {}))
        delete_netns(netns_name(self.config.dpu, service))

    async def _control(self, inst: Instance, method: str, path: str, timeout: float, limit: int = 1 << 20) -> bytes:
        """One request to the instance's control socket (HTTP over `<handoff dir>/control.sock`): its body.
        The socket is reached through /proc/self/fd (a Unix socket's path is at most 107 bytes)."""
        where = os.open(self._handoff_dir(inst.cid), os.O_PATH | os.O_DIRECTORY)
        try:
            transport = httpx.AsyncHTTPTransport(uds=f"/proc/self/fd/{where}/control.sock")
            async with (
                httpx.AsyncClient(transport=transport, timeout=timeout) as client,
                client.stream(method, f"http://{inst.cid}{path}") as resp,
            ):
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ValueError(f"{method} {path}: more than {limit >> 20} MiB")
                if resp.status_code >= 300:
                    said = bytes(body[:200]).decode(errors="replace")
                    raise ValueError(f"{method} {path}: HTTP {resp.status_code} {said}")
                return bytes(body)
        finally:
            os.close(where)

    async def _hand_over(self, old: Instance, want: DesiredInstance) -> None:
        """Upgrade a stateful instance without a gap: pull the new artifact while the old serves, then drain
        the old, export its state, start the new with it, and stop the old once the new is ready. A failed
        step puts the old back to work and keeps it (reason on its report); the next pass tries again."""
        service, handoff = want.service, want.handoff
        assert handoff is not None
        timeout = float(handoff.timeoutSeconds)
        new = self._instance(want)
        new.state_file = True
        step = ""
        drained = False

        def doing(what: str) -> None:
            nonlocal step
            step, old.reason = what, f"handing its state over to revision {want.revision}: {what}"

        try:
            doing("pulling the new artifact")
            await self.pull(want)
            doing("draining")
            await self._control(old, "POST", "/drain", timeout)
            drained = True
            doing("exporting the state")
            state = await self._control(old, "GET", "/state", timeout, handoff.maxStateMiB << 20)
            where = self._handoff_dir(new.cid)
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            (where / "state").write_bytes(state)
            doing("starting the new instance")
            new.task = asyncio.create_task(self._supervise(new, None))
            deadline = time.monotonic() + timeout
            settled_at: float | None = None  # Running and ready since, without a restart
            while settled_at is None or time.monotonic() - settled_at < handoff.settleSeconds:
                if new.phase == "Failed" or new.restarts:
                    raise ValueError(new.reason or "it failed")
                up = new.phase == "Running" and new.ready
                settled_at = (settled_at or time.monotonic()) if up else None
                if time.monotonic() > deadline + handoff.settleSeconds:
                    raise ValueError(f"not ready and settled within {timeout:g}s")
                await asyncio.sleep(0.05)
        except (ValueError, OSError, httpx.HTTPError, SandboxError) as exc:
            why = f"state handoff to revision {want.revision} failed {step}: {exc}"[:2000]
            log.warning("service %s: %s", service, why)
            if new.task is not None:
                await self._stop(new)
            if drained:
                with contextlib.suppress(ValueError, OSError, httpx.HTTPError):
                    await self._control(old, "POST", "/resume", timeout)
            old.reason = why
            self._handoff_retry[service] = time.monotonic() + HANDOFF_RETRY_SECONDS
            return
        log.info("service %s: state handed over to revision %s (%d bytes)", service, want.revision, len(state))
        new.restarts, new.state_file = old.restarts, False  # the state is imported once: a restart starts anew
        (self._handoff_dir(new.cid) / "state").unlink(missing_ok=True)
        self._handoff_retry.pop(service, None)
        self.instances[service] = new
        await self._stop(old)

    # --- a move to another DPU: the state handed on through the control plane ---------------------------------

    async def _hand_on(self, inst: Instance, to: str) -> None:
        """The instance leaves this DPU for `to` (DesiredInstance.stateTo): drain it, export its state and hand
        that to the control plane, which offers it to the new instance there. It stays drained (reported
        not ready, with the export) until it is stopped once the new one serves, or put back to work if the
        move is called off. A failed step puts it back to work at once; the next pass tries again."""
        handoff = inst.desired.handoff
        assert handoff is not None
        service, timeout = inst.desired.service, float(handoff.timeoutSeconds)
        step, drained = "draining", False
        try:
            inst.reason = f"moving to dpu/{to}: draining"
            await self._control(inst, "POST", "/drain", timeout)
            drained, step = True, "exporting the state"
            state = await self._control(inst, "GET", "/state", timeout, handoff.maxStateMiB << 20)
            step = "handing it to the control plane"
            digest = hashlib.sha256(state).hexdigest()
            if not self.uplink():
                raise httpx.ConnectError("network is unreachable")
            resp = await self.http().put(
                f"{self.server}{SERVICES_PATH}/state/{service}", params={"sha256": digest}, content=state,
                timeout=timeout,
            )  # fmt: skip
            if resp.status_code >= 300:
                raise ValueError(f"HTTP {resp.status_code} {resp.text[:300]}")
        except (ValueError, OSError, httpx.HTTPError) as exc:
            why = f"moving to dpu/{to}: handing its state on failed {step}: {exc}"[:2000]
            log.warning("service %s: %s", service, why)
            if drained:
                with contextlib.suppress(ValueError, OSError, httpx.HTTPError):
                    await self._control(inst, "POST", "/resume", timeout)
            inst.reason = why
            self._handoff_retry[service] = time.monotonic() + HANDOFF_RETRY_SECONDS
            return
        log.info("service %s: its state (%d bytes) handed on for dpu/%s", service, len(state), to)
        self._handoff_retry.pop(service, None)
        inst.exported = StateExport(to=to, sha256=digest, bytes=len(state))
        inst.reason = (
            f"drained: its state ({len(state)} bytes) went to dpu/{to}; it stops once the instance there serves"
        )

    async def _prefetch(self, inst: Instance) -> None:
        """A move's new instance pulls its artifact before the leaving one drains (the gap is the start alone)."""
        try:
            await self.pull(inst.desired)
            inst.awaiting_state = True
        except (ValueError, OSError, httpx.HTTPError) as exc:
            inst.reason = f"pulling its artifact failed: {exc}"[:2000]
        finally:
            inst.prefetch = None

    async def _called_off(self, inst: Instance) -> None:
        """The move it drained for is off (its replacement went): back to work."""
        assert inst.desired.handoff is not None
        try:
            await self._control(inst, "POST", "/resume", float(inst.desired.handoff.timeoutSeconds))
        except (ValueError, OSError, httpx.HTTPError) as exc:
            inst.kill_reason = f"the move was called off and it did not resume: {exc}"[:2000]
            await self._restart(inst, inst.cid)
        inst.exported, inst.reason = None, None

    async def _fetch_state(self, inst: Instance) -> None:
        """The state the instance it replaces exported on another DPU, into the file it starts with
        ($DPUFLEET_STATE_FILE): at most maxStateMiB, and its sha256 checked."""
        assert inst.state_from is not None and inst.desired.handoff is not None
        url, want = inst.state_from
        limit = inst.desired.handoff.maxStateMiB << 20
        body = bytearray()
        async with self._artifacts.stream("GET", url) as resp:
            if resp.status_code >= 400:
                raise ValueError(f"fetching its state from {_bare(url)} failed: HTTP {resp.status_code}")
            async for chunk in resp.aiter_bytes(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise ValueError(f"its state from {_bare(url)} is over handoff.maxStateMiB")
        got = hashlib.sha256(body).hexdigest()
        if got != want:
            raise ValueError(f"its state from {_bare(url)} has sha256 {got}, {want} was exported: not started")
        where = self._handoff_dir(inst.cid)
        where.mkdir(parents=True, exist_ok=True)
        (where / "state").write_bytes(bytes(body))
        inst.state_file, inst.state_from = True, None
        log.info("service %s: starts with the state handed on from dpu/%s", inst.desired.service,
                 inst.desired.stateFrom)  # fmt: skip

    # --- kernel modules ------------------------------------------------------------------------------------

    def modules_loaded(self) -> set[str]:
        try:
            text = (self.config.os_root / "proc/modules").read_text()
        except OSError:
            return set()
        return {line.split()[0] for line in text.splitlines() if line.strip()}

    def _boot_id(self) -> str:
        try:
            return (self.config.os_root / "proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""

    def _module_tool(self, argv: list[str]) -> tuple[bool, str]:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{argv[0]}: {exc}"
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return done.returncode == 0, (said[-1] if said else f"exit status {done.returncode}")[:500]

    def _module_boot_file(self, service: str) -> Path:
        return self.root / "modules" / f"{service}.boot"

    def _before_next_boot(self, service: str) -> bool:
        """A needsReboot module: still in the boot it was placed in (noted the first time it is asked)."""
        marker = self._module_boot_file(service)
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(self._boot_id())
            return True
        return marker.read_text() == self._boot_id()

    async def _supervise_module(self, inst: Instance) -> None:
        """A kernelModule instance: fetched and checked like any artifact, loaded with insmod (the service's
        args are its parameters), Running while the kernel lists it, loaded again per restartPolicy if it goes
        away. One that needsReboot is loaded only on a boot after it was placed: Pending until then."""
        desired = inst.desired
        module = desired.artifact.kernelModule
        assert module is not None
        backoff = 0.0
        while not inst.stopping:
            try:
                inst.phase, inst.reason = "Pulling", None
                layout = await self.pull(desired)
                if module.name not in await asyncio.to_thread(self.modules_loaded):
                    if module.needsReboot and await asyncio.to_thread(self._before_next_boot, desired.service):
                        inst.phase = "Pending"
                        inst.reason = f"kernel module {module.name} loads on the DPU's next boot (dpufleet reset dpu)"
                        await self._sleep(inst, MODULE_WATCH_SECONDS)
                        continue
                    inst.phase = "Starting"
                    argv = [*self.config.insmod, str(layout / MODULE_FILE), *desired.args]
                    ok, said = await asyncio.to_thread(self._module_tool, argv)
                    if not ok:
                        raise ValueError(said)
                    if module.name not in await asyncio.to_thread(self.modules_loaded):
                        raise ValueError(f"insmod loaded no module named {module.name} (the service's name for it)")
                inst.phase, inst.ready, inst.started_at, inst.reason = "Running", True, _now(), None
                inst.up_since = time.monotonic()
            except (ValueError, OSError, httpx.HTTPError) as exc:
                inst.phase, inst.ready, inst.reason = "Failed", False, str(exc)[:2000]
                log.warning("service %s: %s", desired.service, exc)
                backoff = next_backoff(backoff)
                await self._sleep(inst, backoff)
                continue
            while not inst.stopping and module.name in await asyncio.to_thread(self.modules_loaded):
                await self._sleep(inst, MODULE_WATCH_SECONDS)
            if inst.stopping:
                return
            inst.ready = False
            if desired.restartPolicy == "Never":
                inst.phase, inst.reason = "Succeeded", f"kernel module {module.name} was unloaded"
                return
            inst.restarts += 1
            inst.phase, inst.reason = "Starting", f"kernel module {module.name} was unloaded; loading it again"
            backoff = next_backoff(backoff)
            await self._sleep(inst, backoff)

    async def _unload(self, inst: Instance) -> None:
        module = inst.desired.artifact.kernelModule
        assert module is not None
        self._module_boot_file(inst.desired.service).unlink(missing_ok=True)
        if inst.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(inst.task, 15)
        if module.name in await asyncio.to_thread(self.modules_loaded):
            ok, said = await asyncio.to_thread(self._module_tool, [*self.config.rmmod, module.name])
            if not ok:
                log.warning("service %s: cannot unload kernel module %s: %s", inst.desired.service, module.name, said)

    # --- pinned cores ----------------------------------------------------------------------------------------

    def cpuset(self, desired: DesiredInstance) -> str | None:
        """The cpuset an instance runs on: its pinned cores (each online here, else ValueError), or this
        machine's online cores less every core an instance of the desired set pins (None when none is pinned:
        it runs where the kernel puts it)."""
        online = online_cpus()
        if desired.cores:
            missing = sorted(set(desired.cores) - set(online))
            if missing:
                raise ValueError(
                    f"its pinned cores {cpulist(missing)} are not online on this DPU (online: {cpulist(online)})"
                )
            return cpulist(desired.cores)
        pinned = self._pinned
        if not pinned & set(online):
            return None
        shared = [c for c in online if c not in pinned]
        return cpulist(shared or online)  # every core pinned: the shared ones still get somewhere to run

    async def _reshare(self) -> None:
        """The pinned cores changed: every running instance that shares cores moves to the new shared set."""
        for inst in self.instances.values():
            if inst.desired.cores or inst.pid is None or inst.desired.artifact.kernelModule is not None:
                continue
            want = self.cpuset(inst.desired)
            if want == inst.cpus:
                continue
            every = cpulist(online_cpus())
            done = await asyncio.to_thread(self._runc, "update", "--cpuset-cpus", want or every, inst.cid)
            if done.returncode == 0:
                inst.cpus = want
                log.info("service %s: now shares cores %s", inst.desired.service, want or every)
            else:
                log.warning("service %s: runc update --cpuset-cpus %s: %s", inst.desired.service, want,
                            done.stderr.strip()[:300])  # fmt: skip

    # --- supervision -----------------------------------------------------------------------------------------

    async def _supervise(self, inst: Instance, adopted_pid: int | None) -> None:
        if inst.desired.artifact.kernelModule is not None:
            await self._supervise_module(inst)
            return
        cid = inst.cid
        backoff = 0.0
        while not inst.stopping:
            desired = inst.desired  # a config change meanwhile (same revision) starts with the new files
            try:
                if adopted_pid is None:
                    inst.phase, inst.reason = "Pulling", None
                    layout = await self.pull(desired)
                    inst.phase = "Starting"
                    if inst.state_from is not None:
                        await self._fetch_state(inst)
                    box = await asyncio.to_thread(self._sandbox, inst) if desired.handoff else None
                    inst.cpus = self.cpuset(desired)
                    bundle = await asyncio.to_thread(self.prepare, desired, layout, box, inst.cpus)
                    inst.config_revision = desired.configRevision
                    code = await self._run(inst, cid, bundle)
                    if inst.state_file and not inst.stopping:  # imported once: a restart starts anew
                        inst.state_file = False
                        (self._handoff_dir(cid) / "state").unlink(missing_ok=True)
                else:
                    inst.phase, inst.pid, inst.config_revision = "Running", adopted_pid, desired.configRevision
                    await asyncio.to_thread(self._take_sockets, inst)
                    inst.started_at = inst.started_at or _now()
                    code = await self._watch_adopted(inst, adopted_pid)
                    adopted_pid = None
            except (ValueError, OSError, httpx.HTTPError, subprocess.SubprocessError, SandboxError) as exc:
                inst.phase, inst.ready, inst.reason = "Failed", False, str(exc)[:2000]
                log.warning("service %s: %s", desired.service, exc)
                backoff = next_backoff(backoff)
                await self._sleep(inst, backoff)
                continue
            inst.pid, inst.ready = None, False
            if inst.stopping:
                break
            uptime = time.monotonic() - inst.up_since
            inst.exit_code = code
            why = inst.kill_reason or (f"exited with status {code}" if code is not None else "exited")
            if inst.oom_killed:
                limit = desired.resources.memoryMiB
                why = f"out of memory: the kernel killed it at its limit of {limit} MiB ({why})"
            inst.kill_reason, inst.oom_killed = None, False
            again = desired.restartPolicy == "Always" or (desired.restartPolicy == "OnFailure" and code != 0)
            if not again:
                inst.phase = "Succeeded" if code == 0 else "Failed"
                inst.reason = why
                return
            inst.restarts += 1
            inst.phase, inst.reason = "Starting", why
            backoff = 0.0 if uptime >= STEADY_SECONDS else next_backoff(backoff)
            await self._sleep(inst, backoff)

    async def _sleep(self, inst: Instance, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not inst.stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def _run(self, inst: Instance, cid: str, bundle: Path) -> int | None:
        await asyncio.to_thread(self._runc, "delete", "--force", cid)  # a stopped one of the same name
        log_path = self._log_path(inst.desired.service)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.runc_root.mkdir(parents=True, exist_ok=True)
        pid_file = self.runc_root / f"{cid}.pid"  # runc writes it once the container exists
        pid_file.unlink(missing_ok=True)
        held = self._held_fds(inst)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.config.runc,
                "--root",
                str(self.runc_root),
                "run",
                "--keep",  # its cgroup stays until the delete below: what it died of is read there first
                "--preserve-fds",
                str(len(held)),
                "--pid-file",
                str(pid_file),
                "--bundle",
                str(bundle),
                cid,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # the agent's own signals (Ctrl-C) do not reach its instances
                pass_fds=tuple(range(3, 3 + len(held))),
                preexec_fn=(lambda: _place_fds(held)) if held else None,
            )
        finally:
            os.close(fd)
        pid = await self._wait_pid(pid_file, proc)
        if pid is None:
            code = await proc.wait()
            reason = " ".join(tail(log_path, 3)) or f"runc exited with status {code}"
            raise ValueError(f"the container did not start: {reason}"[:2000])
        inst.pid = pid
        inst.phase, inst.started_at, inst.reason = "Running", _now(), None
        inst.probe_failures, inst.up_since = {}, time.monotonic()
        inst.served, inst.degraded = False, None
        inst.ready = inst.desired.probes.readiness is None
        probing = asyncio.create_task(self._probe_loop(inst, cid))
        try:
            code = await proc.wait()
        except asyncio.CancelledError:  # the agent stops: the instance runs on (a restarted agent adopts it)
            probing.cancel()
            raise
        probing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probing
        inst.oom_killed = bool(self._oom_kills(inst))  # read before the delete removes its cgroup
        await asyncio.to_thread(self._runc, "delete", "--force", cid)
        return code

    async def _wait_pid(self, pid_file: Path, proc: asyncio.subprocess.Process) -> int | None:
        """The container's init pid once runc has created it (it may have exited already: its status is
        runc's); None if runc gave up before creating it."""
        for _ in range(1200):
            with contextlib.suppress(OSError, ValueError):
                return int(pid_file.read_text().strip())
            if proc.returncode is not None:
                return None
            await asyncio.sleep(0.025)
        return None

    async def _watch_adopted(self, inst: Instance, pid: int) -> int | None:
        """An instance started before the agent restarted: watched by its pid (its exit status is lost)."""
        cid = inst.cid
        inst.ready = inst.desired.probes.readiness is None
        inst.up_since = time.monotonic()
        probing = asyncio.create_task(self._probe_loop(inst, cid))
        try:
            while not inst.stopping and _pid_alive(pid):
                await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            probing.cancel()
            raise
        probing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probing
        if not inst.stopping:
            inst.oom_killed = bool(self._oom_kills(inst))
            await asyncio.to_thread(self._runc, "delete", "--force", cid)
        return None

    async def _probe_loop(self, inst: Instance, cid: str) -> None:
        probes = inst.desired.probes
        checks = [(n, p) for n, p in (("liveness", probes.liveness), ("readiness", probes.readiness)) if p]
        if not checks:
            return
        period = min(p.periodSeconds for _, p in checks)
        next_at = {name: 0.0 for name, _ in checks}
        while True:
            await asyncio.sleep(min(1.0, period))
            now = time.monotonic()
            for name, probe in checks:
                if now < next_at[name]:
                    continue
                next_at[name] = now + probe.periodSeconds
                ok, detail = await asyncio.to_thread(self.probe, inst, cid, probe)
                if name == "readiness":
                    inst.ready = ok
                    if ok:
                        inst.served, inst.degraded = True, None
                    elif inst.served:
                        if inst.degraded is None:
                            log.warning("service %s: not ready any more: %s", inst.desired.service, detail)
                        inst.degraded = f"readiness probe failing: {detail}"[:2000]
                    continue
                failures = 0 if ok else inst.probe_failures.get(name, 0) + 1
                inst.probe_failures[name] = failures
                if failures >= probe.failureThreshold and inst.pid is not None:
                    inst.kill_reason = f"liveness probe failed {failures} times: {detail}"[:2000]
                    log.warning("service %s: %s; killing it", inst.desired.service, inst.kill_reason)
                    await asyncio.to_thread(self._runc, "kill", cid, "KILL")
                    return

    async def _restart(self, inst: Instance, cid: str) -> None:
        """SIGTERM, and SIGKILL after the grace period if the same process still runs (a container's
        PID 1 ignores signals it has no handler for); its supervisor starts it again."""
        pid = inst.pid
        await asyncio.to_thread(self._runc, "kill", cid, "TERM")
        deadline = time.monotonic() + self.config.stop_grace
        while inst.pid == pid and pid is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if inst.pid == pid and pid is not None:
            await asyncio.to_thread(self._runc, "kill", cid, "KILL")

    def reload(self, inst: Instance, cid: str) -> tuple[bool, str]:
        """Tell a running instance its config files changed, as its service declares: (done, what it said)."""
        how = inst.desired.reload
        if how is None:
            return False, "the service declares no reload"
        if how.signal is not None:
            done = self._runc("kill", cid, how.signal, timeout=float(how.timeoutSeconds))
            return done.returncode == 0, (done.stderr.strip() or f"SIG{how.signal} sent")[:300]
        assert how.http is not None
        ok, said = self._connect(inst, "post", how.http.port, how.http.path, float(how.timeoutSeconds))
        return ok, f"POST {how.http.path}: {said}"

    def _connect(self, inst: Instance, kind: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
        """A tcp connect, an HTTP GET or a POST to the instance, from inside its network namespace."""
        argv = [sys.executable, "-c", _PROBE_SCRIPT, kind, str(port), path, str(timeout)]
        if not inst.desired.privileged and inst.pid is not None:
            argv = [self.config.nsenter, "-t", str(inst.pid), "-n", *argv]
        return self._run_check(argv, timeout)

    @staticmethod
    def _run_check(argv: list[str], timeout: float) -> tuple[bool, str]:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 2, check=False)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:g}s"
        said = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1][:300]
        return done.returncode == 0, said or f"exit status {done.returncode}"

    def probe(self, inst: Instance, cid: str, probe: Probe) -> tuple[bool, str]:
        """Run one probe: (passed, what it said)."""
        timeout = float(probe.timeoutSeconds)
        if probe.exec is not None:
            return self._run_check([self.config.runc, "--root", str(self.runc_root), "exec", cid, *probe.exec], timeout)
        kind, port, path = ("tcp", probe.tcp.port, "/") if probe.tcp else ("http", probe.http.port, probe.http.path)  # type: ignore[union-attr]
        return self._connect(inst, kind, port, path, timeout)

    # --- converge --------------------------------------------------------------------------------------------

    async def converge(self, desired: DesiredServices, adopt: dict[str, dict[str, Any]] | None = None) -> None:
        """Start what is wanted and not running, stop what runs and is not wanted (or at another revision),
        and apply config-only changes in place."""
        wanted = {d.service: d for d in desired.instances}
        self._pinned = {c for d in desired.instances for c in d.cores}
        for service in sorted(set(self.instances) - set(wanted)):
            if service not in self._handoffs:
                await self.stop_instance(service)
        for service, want in wanted.items():
            if service in self._handoffs:
                continue  # one handoff at a time; the next pass sees where it ended
            inst = self.instances.get(service)
            other = inst is not None and _another_service(inst.desired, want)
            if inst is not None and (inst.desired.runs != want.runs or other):
                if not other and self._can_hand_over(inst, want):
                    if time.monotonic() >= self._handoff_retry.get(service, 0.0):
                        self._start_handoff(inst, want)
                    continue
                await self.stop_instance(service, keep_sandbox=want.handoff is not None and not other)
                inst = None
            if inst is None:
                inst = self._instance(want)
                self.instances[service] = inst
            if inst.task is None:
                pid = None
                found = (adopt or {}).get(inst.cid)
                if found and found.get("status") == "running" and _revision_of(found) == want.runs:
                    pid = int(found["pid"])
                waiting = [a for a in want.after if not self._running(a)]
                if waiting and pid is None:  # dependsOn SameDPU: what it needs here runs first
                    inst.phase, inst.reason = "Pending", f"waiting for {', '.join(waiting)} to run on this DPU"
                    continue
                if want.stateFrom and pid is None and want.handoff is not None:  # a move: it starts with the state
                    if want.stateURL is None or want.stateSha256 is None:
                        inst.phase, inst.desired = "Pending", want
                        if inst.awaiting_state:
                            inst.reason = f"pulled; waiting for its state from dpu/{want.stateFrom}"
                        elif inst.prefetch is None:  # (again, after a failed pull: its reason stays shown)
                            inst.prefetch = asyncio.create_task(self._prefetch(inst))
                            inst.reason = (
                                inst.reason or f"pulling, then waiting for its state from dpu/{want.stateFrom}"
                            )
                        continue
                    inst.state_from = (want.stateURL, want.stateSha256)
                inst.desired = want
                inst.task = asyncio.create_task(self._supervise(inst, pid))
                continue
            if want.handoff is not None and service not in self._handoffs:
                if want.stateTo and inst.exported is None and self._can_hand_over(inst, want):
                    if time.monotonic() >= self._handoff_retry.get(service, 0.0):
                        self._start_task(service, self._hand_on(inst, want.stateTo))
                elif inst.exported is not None and want.stateTo != inst.exported.to:
                    self._start_task(service, self._called_off(inst))
            if want.configRevision != inst.desired.configRevision:
                inst.desired = want
                if inst.pid is not None:
                    await asyncio.to_thread(self.write_files, want)
                    ok, said = await asyncio.to_thread(self.reload, inst, inst.cid)
                    if ok:
                        inst.config_revision = want.configRevision
                    else:  # the new files come with a restart (counted: an upgrade sees it)
                        inst.kill_reason = f"config reload failed: {said}"[:2000]
                        log.warning("service %s: %s; restarting it", service, inst.kill_reason)
                        await self._restart(inst, inst.cid)
            inst.desired = want
        await self._reshare()

    def _running(self, service: str) -> bool:
        inst = self.instances.get(service)
        return inst is not None and inst.phase == "Running"

    def _can_hand_over(self, inst: Instance, want: DesiredInstance) -> bool:
        """Both revisions declare a handoff and the old one serves: the state moves instead of a restart."""
        return (
            want.handoff is not None
            and inst.desired.handoff is not None
            and inst.phase == "Running"
            and inst.pid is not None
            and not inst.stopping
        )

    def _start_handoff(self, inst: Instance, want: DesiredInstance) -> None:
        self._start_task(want.service, self._hand_over(inst, want))

    def _start_task(self, service: str, work: Coroutine[Any, Any, None]) -> None:
        """One handoff step at a time per service (an upgrade's, a move's): the next pass sees where it ended."""
        task = asyncio.create_task(work)
        self._handoffs[service] = task
        task.add_done_callback(lambda _t: self._handoffs.pop(service, None))

    async def stop_instance(self, service: str, keep_sandbox: bool = False) -> None:
        """Stop the service's instance here; unless `keep_sandbox` (its next instance follows), a handoff
        service's namespace and sockets go with it."""
        inst = self.instances.pop(service, None)
        if inst is not None:
            await self._stop(inst)
        if not keep_sandbox and (service in self._sockets or netns_path(netns_name(self.config.dpu, service)).exists()):
            await asyncio.to_thread(self._drop_sandbox, service)

    async def _stop(self, inst: Instance) -> None:
        """SIGTERM, SIGKILL after the grace period, the container and its bundle gone (a kernel module:
        unloaded)."""
        inst.stopping = True
        if inst.desired.artifact.kernelModule is not None:
            await self._unload(inst)
            return
        cid = inst.cid
        if inst.pid is not None:
            await asyncio.to_thread(self._runc, "kill", cid, "TERM")
            deadline = time.monotonic() + self.config.stop_grace
            while inst.pid is not None and _pid_alive(inst.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        await asyncio.to_thread(self._runc, "delete", "--force", cid)
        if inst.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(inst.task, 15)
        shutil.rmtree(self._bundle(inst.desired), ignore_errors=True)
        if inst.desired.handoff is not None:
            shutil.rmtree(self._handoff_dir(cid), ignore_errors=True)
            shutil.rmtree(self._files_dir(inst.desired), ignore_errors=True)

    def report(self) -> ServiceReport:
        instances = self.instance_reports()
        logs = [InstanceLogs(service=i.service, lines=tail(self._log_path(i.service))) for i in instances]
        return ServiceReport(instances=instances, logs=logs)

    def instance_reports(self) -> list[InstanceReport]:
        """Each instance as it is now, memory and CPU read from its cgroup (the telemetry loop reads this from its
        thread: the instances are taken in one step)."""
        reports = []
        for _service, inst in sorted(list(self.instances.items())):
            running = inst.pid is not None
            reports.append(
                inst.report(self._memory(inst) if running else (None, None), self._cpu(inst) if running else None)
            )
        return reports

    def _memory(self, inst: Instance) -> tuple[int | None, int | None]:
        rel = inst.cgroup
        for usage, limit in (
            (
                f"/sys/fs/cgroup/memory/{rel}/memory.usage_in_bytes",
                f"/sys/fs/cgroup/memory/{rel}/memory.limit_in_bytes",
            ),
            (f"/sys/fs/cgroup/{rel}/memory.current", f"/sys/fs/cgroup/{rel}/memory.max"),
        ):
            with contextlib.suppress(OSError, ValueError):
                return int(Path(usage).read_text()), int(Path(limit).read_text())
        return None, None

    def _oom_kills(self, inst: Instance) -> int | None:
        """How many times the kernel's OOM killer struck in the instance's cgroup (v1 memory.oom_control, v2
        memory.events); None when it cannot be read."""
        rel = inst.cgroup
        for path in (f"/sys/fs/cgroup/memory/{rel}/memory.oom_control", f"/sys/fs/cgroup/{rel}/memory.events"):
            with contextlib.suppress(OSError, ValueError, StopIteration):
                lines = Path(path).read_text().splitlines()
                return int(next(line.split()[1] for line in lines if line.startswith("oom_kill ")))
        return None

    def _cpu(self, inst: Instance) -> float | None:
        """CPU time the instance's cgroup has used, in seconds (cgroup v1 cpuacct, or v2 cpu.stat)."""
        rel = inst.cgroup
        with contextlib.suppress(OSError, ValueError):
            return int(Path(f"/sys/fs/cgroup/cpuacct/{rel}/cpuacct.usage").read_text()) / 1e9
        with contextlib.suppress(OSError, ValueError, StopIteration):
            stat = Path(f"/sys/fs/cgroup/{rel}/cpu.stat").read_text().splitlines()
            return int(next(line.split()[1] for line in stat if line.startswith("usage_usec "))) / 1e6
        return None

    async def send(self, report: ServiceReport, now: float) -> None:
        key = report.model_dump(exclude={"instances": {"__all__": {"memoryBytes", "cpuSeconds"}}})
        if self._last_sent is not None:
            last, at = self._last_sent
            if last == key and now - at < REPORT_EVERY:
                return
        if not self.uplink():
            raise httpx.ConnectError("network is unreachable")
        resp = await self.http().post(
            self.server + SERVICES_PATH + "/status" + self.config.query, json=report.model_dump()
        )
        if resp.status_code >= 400:
            raise RuntimeError(
                f"the control plane refused the service status: HTTP {resp.status_code} {resp.text[:300]}"
            )
        self._last_sent = (key, now)

    def _trim_logs(self) -> None:
        for service in self.instances:
            path = self._log_path(service)
            with contextlib.suppress(OSError):
                if path.stat().st_size > LOG_LIMIT_BYTES:
                    keep = tail(path, LOG_TAIL_LINES, LOG_TAIL_BYTES)
                    with path.open("r+") as f:  # the writers append (O_APPEND): they go on at the new end
                        f.truncate(0)
                        f.write("\n".join(["[dpufleet: log cut]", *keep]) + "\n")

    # --- exec ---------------------------------------------------------------------------------------------

    def run_exec(self, request: ExecRequest) -> ExecResult:
        """Run one command inside the service's running container (`runc exec`: its namespaces, cgroup,
        user, capabilities and seccomp profile), output cut at EXEC_OUTPUT_BYTES."""
        inst = self.instances.get(request.service)
        if inst is None or inst.phase != "Running" or inst.pid is None:
            phase = inst.phase if inst is not None else "not placed here"
            return ExecResult(error=f"service {request.service!r} has no running instance on this DPU ({phase})")
        argv = [
            self.config.runc,
            "--root",
            str(self.runc_root),
            "exec",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # runc exec sets none
            inst.cid,
            *request.command,
        ]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            return ExecResult(error=f"cannot run {self.config.runc}: {exc}")
        try:
            stdout, stderr = proc.communicate(timeout=request.timeoutSeconds)
        except subprocess.TimeoutExpired:
            proc.terminate()  # runc passes the signal on to the command inside the container
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            return ExecResult(error=f"the command did not finish within {request.timeoutSeconds:g}s (sent SIGTERM)")
        raw = stdout + stderr
        output = raw[:EXEC_OUTPUT_BYTES].decode("utf-8", errors="replace")
        return ExecResult(exitCode=proc.returncode, output=output, truncated=len(raw) > EXEC_OUTPUT_BYTES)

    async def _exec(self, request: ExecRequest) -> None:
        result = await asyncio.to_thread(self.run_exec, request)
        try:
            resp = await self.http().post(
                self.server + SERVICES_PATH + "/exec/" + request.id + self.config.query,
                json=result.model_dump(mode="json"),
            )
            if resp.status_code >= 400:
                log.info("services: exec %s: the control plane took no answer (HTTP %s)", request.id, resp.status_code)
        except httpx.HTTPError as exc:  # run once, never again: the caller sees its request time out
            log.warning("services: exec %s: cannot send its result (%s)", request.id, exc)

    def start_execs(self, requests: list[ExecRequest]) -> None:
        """Each handed-out command runs once, beside the convergence (a slow pull does not hold it up)."""
        for request in requests:
            task = asyncio.create_task(self._exec(request))
            self._execs.add(task)
            task.add_done_callback(self._execs.discard)

    async def once(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            desired = await self.fetch()
            if desired.execs:
                self.start_execs(desired.execs)
                desired = desired.model_copy(update={"execs": []})  # commands are run once, never kept
            await asyncio.to_thread(self.save_desired, desired)
            self.desired = desired
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            log.debug("services: cannot read the desired services (%s); keeping the last ones", exc)
        if self.desired is None:
            return
        await self.converge(self.desired)
        await asyncio.to_thread(self._trim_logs)
        try:
            await self.send(self.report(), loop.time())
        except (httpx.HTTPError, RuntimeError) as exc:
            log.debug("services: cannot send the status (%s)", exc)
            self._last_sent = None

    async def restore(self) -> None:
        """At start: the durable desired set, the containers still running at its revisions adopted, the
        others removed, the missing ones started, all before the control plane is asked."""
        self.desired = await asyncio.to_thread(self.load_desired)
        found = await asyncio.to_thread(self.containers)
        wanted = {instance_ids(d, self.config.dpu)[0]: d.runs for d in (self.desired.instances if self.desired else [])}
        for cid, state in found.items():
            if wanted.get(cid) != _revision_of(state) or state.get("status") != "running":
                await asyncio.to_thread(self._runc, "delete", "--force", cid)
        if self.desired is not None:
            await self.converge(self.desired, adopt=found)

    async def power_lost(self) -> None:
        """The machine went down under us: every container is gone (as on a real reboot)."""
        for inst in self.instances.values():
            inst.stopping = True
        await asyncio.to_thread(self.kill_all)
        tasks = [i.task for i in self.instances.values() if i.task is not None]
        self.instances.clear()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 15)
        self._last_sent = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            self.check_tools()
        except RuntimeUnavailable as exc:
            log.error("services: %s", exc)
            return
        try:
            await self.restore()
            while not stop.is_set():
                if not self.alive():
                    await self.power_lost()
                    while not self.alive() and not stop.is_set():
                        await asyncio.sleep(0.05)
                    if stop.is_set():
                        break
                    await self.restore()
                try:
                    await self.once()
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    log.warning("services: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.interval)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """The agent stops: its instances keep running (a restarted agent adopts them)."""
        for inst in self.instances.values():
            inst.stopping = True
            if inst.task is not None:
                inst.task.cancel()
        for inst in list(self.instances.values()):
            if inst.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await inst.task
        for task in list(self._execs):  # an exec in flight: its caller sees a timeout
            task.cancel()
        await self._artifacts.aclose()


def _another_service(running: DesiredInstance, want: DesiredInstance) -> bool:
    """The service of that name was deleted and made again (its uid differs): its instance here is not this
    one's to keep, nor its state to hand over. An instance from before uids were given matches any."""
    return running.serviceUID is not None and want.serviceUID is not None and running.serviceUID != want.serviceUID


def _place_fds(fds: list[int]) -> None:
    """In the child before runc starts: the held sockets as fds 3.. (runc --preserve-fds passes those on).
    Copied high first, so a socket already among 3.. is not overwritten before it is placed."""
    high = [os.dup2(fd, 200 + i) for i, fd in enumerate(fds)]
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
        os.close(fd)


def _revision_of(state: dict[str, Any]) -> str | None:
    annotations = state.get("annotations") or {}
    return annotations.get("io.dpufleet.revision") if isinstance(annotations, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text()
        if status.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ref_name(layout: Path) -> str:
    """The first tag the layout's index names (`latest` if none)."""
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        index = json.loads((layout / "index.json").read_text())
        name = index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name")
        if name:
            return str(name)
    return "latest"


def _extract_rootfs(archive: Path, into: Path) -> None:
    """A native bundle (a tar, possibly compressed, of a root filesystem) into `into/rootfs`, refusing paths
    that leave it."""
    tmp = into.with_name(into.name + ".unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "rootfs").mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / "rootfs", filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"the artifact is not a readable bundle (a tar of a root filesystem): {exc}") from None
    shutil.rmtree(into, ignore_errors=True)
    tmp.replace(into)


def _extract(archive: Path, into: Path) -> None:
    """An OCI archive (a tar of an OCI layout) into a directory, refusing paths that leave it."""
    tmp = into.with_name(into.name + ".unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"the artifact is not a readable OCI archive: {exc}") from None
    if not (tmp / "index.json").exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError("the artifact is not an OCI archive: it has no index.json at its top")
    shutil.rmtree(into, ignore_errors=True)
    tmp.replace(into)
