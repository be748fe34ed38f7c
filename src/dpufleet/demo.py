"""`dpufleet demo`: a whole control plane in one process, with a few example objects, for a first look.

`run_demo` runs stages in order against an embedded API server. Each stage gets the
`DemoContext` (server, client, data dir) and may register cleanups on its exit stack,
which run in reverse when the demo stops. The emulated fleet (`dpufleet sim`) and
discovery plug in as further stages in `DEFAULT_STAGES`, after the example objects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn

from .cli.common import UserError
from .cli.output import print_table, resource_table
from .client import Client
from .images.repository import advertise_repository
from .server.runner import Server, parse_listen, uvicorn_options
from .sim.runner import SimOptions, sim_in_thread

log = logging.getLogger(__name__)

DEMO_LISTEN = "127.0.0.1:8740"
READY_TIMEOUT = 30.0
POLL_ENV = "DPUFLEET_PROVISIONING_POLL_SECONDS"


@dataclass
class EmbeddedServer:
    """The API server (with its in-process controllers) on a background thread of this process."""

    server: Server
    uvicorn: uvicorn.Server
    thread: threading.Thread
    url: str

    @classmethod
    def start(
        cls, data_dir: Path, listen: str = "127.0.0.1:0", db_url: str | None = None, *, controllers: bool = True
    ) -> EmbeddedServer:
        """Bind first (so a busy port is a clear error and port 0 picks a free one), then serve."""
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise UserError(
                f"cannot listen on {listen}: {exc.strerror or exc} (choose another with --listen)"
            ) from None
        bound_port = sock.getsockname()[1]
        server = Server.build(data_dir, db_url, controllers=controllers)
        advertise_repository(
            server.services.repository, host, bound_port
        )  # BMCs fetch images from the API port, as with serve()
        config = uvicorn.Config(
            server.app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
            lifespan="on",
            **uvicorn_options(),
        )
        userver = uvicorn.Server(config)
        thread = threading.Thread(target=userver.run, kwargs={"sockets": [sock]}, name="dpufleet-api", daemon=True)
        thread.start()
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return cls(server, userver, thread, f"http://{shown}:{bound_port}")

    @property
    def token_path(self) -> Path:
        return self.server.state.auth.admin_token_path

    def token(self) -> str:
        return self.token_path.read_text().strip()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll /readyz with a growing pause until it answers 200, the thread dies, or time runs out."""
        deadline = time.monotonic() + timeout
        pause = 0.02
        with Client(self.url, timeout=2.0) as client:
            while True:
                if client.ready():
                    return
                if not self.thread.is_alive():
                    raise UserError(f"the embedded API server at {self.url} stopped while starting (see the log above)")
                if time.monotonic() > deadline:
                    raise UserError(f"the embedded API server at {self.url} was not ready after {timeout:.0f}s")
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to shut down (lifespan stops the controllers and the change feed), then close the store."""
        self.uvicorn.should_exit = True
        self.thread.join(timeout=timeout)
        if self.thread.is_alive():
            log.warning("the embedded API server did not stop within %.0fs; leaving its thread behind", timeout)
        self.server.store.close()


@dataclass
class DemoContext:
    server: EmbeddedServer
    client: Client
    data_dir: Path
    out: Callable[[str], None]
    cleanups: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


DemoStage = Callable[[DemoContext], None]

# The flavor the demo applies is examples/fleet/30-dpuflavor.yaml of the checkout, so the demo and the
# examples a user starts from cannot drift apart. An installed wheel has no examples/: it applies this copy,
# which tests/examples/test_manifests.py keeps equal to the file.
EXAMPLE_FILES = [Path(__file__).resolve().parents[2] / "examples" / "fleet" / "30-dpuflavor.yaml"]
BUILTIN_EXAMPLE_OBJECTS: list[dict[str, Any]] = [
    {
        "apiVersion": "dpufleet.io/v1alpha1",
        "kind": "DPUFlavor",
        "metadata": {"name": "default"},
        "spec": {
            "kernelParameters": ["iommu.passthrough=1"],
            "hugepages": [{"pageSize": "2Mi", "count": 1024}],
            "reservedResources": {"cpus": 2, "memoryMiB": 4096},
        },
    },
]


def example_objects() -> list[dict[str, Any]]:
    """The documents of EXAMPLE_FILES when this is a checkout, else the built-in copy."""
    from .cli.apply import load

    if not all(path.is_file() for path in EXAMPLE_FILES):
        return BUILTIN_EXAMPLE_OBJECTS
    return [manifest.doc for manifest in load([str(path) for path in EXAMPLE_FILES])]


DEMO_FLEET = SimOptions(
    hosts=4,
    dpus_per_host=2,
    profiles=["nvidia-bluefield-3", "intel-ipu-e2100", "amd-pensando-dsc", "marvell-octeon-10"],
    seed=2026,
    time_scale=0.05,
    heartbeat_seconds=2.0,  # the agents report (and pick up agent-path installs) every 2 s
)
FLEET_TIMEOUT = 90.0


def apply_examples(ctx: DemoContext) -> None:
    """The example flavor (examples/fleet/30-dpuflavor.yaml), applied through the HTTP API like any user would."""
    for doc in example_objects():
        obj, outcome = ctx.client.apply(doc)
        ctx.out(f"  {obj['kind'].lower()}/{obj['metadata']['name']} {outcome}")


def start_emulated_fleet(ctx: DemoContext) -> None:
    """Start an emulated fleet (Redfish BMCs + agents) and register it the way an operator would:
    a Credential with the site's BMC password and a Discovery listing the BMC endpoints. Then
    wait until discovery has inventoried every DPU and paired it with its host."""
    options = replace(DEMO_FLEET, directory=ctx.data_dir / "sim", server=ctx.server.url, token=ctx.server.token())
    expected = options.hosts * options.dpus_per_host
    ctx.out("")
    ctx.out(
        f"Starting an emulated fleet: {options.hosts} hosts x {options.dpus_per_host} DPUs "
        f"({', '.join(options.profiles)}), one Redfish BMC per DPU, the dpufleet agent on every DPU and host"
    )
    running = ctx.cleanups.enter_context(sim_in_thread(options))
    ctx.out(
        f"  BMCs at {running.endpoints[0].rsplit('/bmc/', 1)[0]}/bmc/<id>/redfish/v1; "
        f"site credentials in {options.directory}/site-credentials.json (0600)"
    )
    ctx.out("  registered credential/sim-site and discovery/sim through the API")
    if running.agent_url:
        ctx.out(
            f"  trusted {len(running.identities.cas)} emulated vendor CAs; {len(running.agents)} agents enroll "
            f"with their IDevIDs and report over mTLS to {running.agent_url}"
        )
    ref = ctx.client.resolve_kind("dpus")
    deadline = time.monotonic() + FLEET_TIMEOUT
    last = -1
    while True:
        items = ctx.client.list(ref).items
        done = [d for d in items if _fully_inventoried(d)]
        if len(done) != last:
            last = len(done)
            ctx.out(f"  discovered and inventoried {len(done)}/{expected} DPUs")
        if len(done) >= expected:
            return
        if time.monotonic() > deadline:
            raise UserError(f"only {len(done)} of {expected} DPUs were inventoried within {FLEET_TIMEOUT:.0f}s")
        time.sleep(0.5)


def _fully_inventoried(dpu: dict[str, Any]) -> bool:
    status = dpu.get("status") or {}
    return bool(status.get("firmware") and status.get("host") and status.get("agent"))


DEMO_IMAGE = "demo-os-2"
DEMO_VERSION = "demo-2.0"
DEMO_PAYLOAD = b"dpufleet demo: an emulated DPU operating system image\n" * 2048
# Which install path each vendor's DPUs use in the demo (the rest: the model's first, redfish-update).
DEMO_INSTALL_PATHS = {"Intel": "http-boot", "Marvell": "agent"}
PROVISION_TIMEOUT = 60.0
DEMO_POLL_SECONDS = "0.25"  # the provisioner's BMC polls; the emulated hardware runs at time_scale


def provision_fleet(ctx: DemoContext) -> None:
    """Provision every DPU as a user would: upload an OS image's content to the repository, create
    the Image, set spec.image (and, for some vendors, spec.installPath) on each DPU through the API,
    then follow the phases until every DPU is Ready."""
    ctx.out("")
    ctx.out("Provisioning the fleet:")
    blob = ctx.client.upload_blob(DEMO_PAYLOAD)
    ctx.out(f"  uploaded {blob['size']} bytes to the image repository as sha256:{blob['sha256'][:12]}...")
    component = {"name": "os", "type": "os", "version": DEMO_VERSION, "sha256": blob["sha256"], "size": blob["size"]}
    image = {
        "apiVersion": "dpufleet.io/v1alpha1",
        "kind": "Image",
        "metadata": {"name": DEMO_IMAGE},
        "spec": {"version": DEMO_VERSION, "components": [component]},
    }
    obj, outcome = ctx.client.apply(image)
    ctx.out(f"  image/{obj['metadata']['name']} {outcome}")
    ref = ctx.client.resolve_kind("dpus")
    paths: dict[str, int] = {}
    for dpu in ctx.client.list(ref).items:
        vendor = str((dpu.get("status") or {}).get("vendor") or "")
        spec: dict[str, Any] = {"image": DEMO_IMAGE}
        path = DEMO_INSTALL_PATHS.get(vendor)
        if path and path in _supported_paths(dpu):
            spec["installPath"] = path
        paths[spec.get("installPath", "redfish-update")] = paths.get(spec.get("installPath", "redfish-update"), 0) + 1
        ctx.client.patch(ref, dpu["metadata"]["name"], {"spec": spec})
    shown = ", ".join(f"{n} through {p}" for p, n in sorted(paths.items()))
    ctx.out(f"  spec.image={DEMO_IMAGE} set on {sum(paths.values())} DPUs ({shown})")
    follow_provisioning(ctx, sum(paths.values()))


def _supported_paths(dpu: dict[str, Any]) -> list[str]:
    from .provisioning.flavor import profile_of

    profile = profile_of(dpu.get("status") or {})
    return list(profile.install_paths) if profile else ["redfish-update"]


def follow_provisioning(ctx: DemoContext, expected: int, timeout: float = PROVISION_TIMEOUT) -> None:
    """A line per change: how many DPUs are in each phase, until all are Ready (or one failed)."""
    ref = ctx.client.resolve_kind("dpus")
    start = time.monotonic()
    last = ""
    order = ["Available", "PreparingHost", "StagingImage", "Installing", "Rebooting", "Configuring", "Ready"]
    while True:
        items = ctx.client.list(ref).items
        phases: dict[str, int] = {}
        for dpu in items:
            phase = str((dpu.get("status") or {}).get("phase") or "Discovered")
            phases[phase] = phases.get(phase, 0) + 1
        ready = phases.get("Ready", 0)
        failed = {p: n for p, n in phases.items() if p.endswith("Failed")}
        ranked = sorted(phases.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1)
        line = "  ".join(f"{phase} {count}" for phase, count in ranked)
        if line != last:
            last = line
            bar = "#" * (ready * 20 // max(expected, 1))
            ctx.out(f"  {time.monotonic() - start:5.1f}s [{bar:<20}] {ready}/{expected} Ready   {line}")
        if ready >= expected:
            return
        if failed and ready + sum(failed.values()) >= expected:
            raise UserError(f"provisioning stopped: {failed}; see `dpufleet get dpus -o wide` and the events")
        if time.monotonic() - start > timeout:
            raise UserError(f"only {ready} of {expected} DPUs were Ready within {timeout:.0f}s")
        time.sleep(0.5)


# Stages after the server is up, in order.
DEFAULT_STAGES: list[DemoStage] = [apply_examples, start_emulated_fleet, provision_fleet]


def connection_help(server: EmbeddedServer, data_dir: Path, temporary: bool) -> str:
    keep = "  (a temporary directory, removed when the demo stops; pass --data-dir to keep it)" if temporary else ""
    return "\n".join(
        [
            f"dpufleet API server ready at {server.url}",
            f"data dir: {data_dir}{keep}",
            "",
            "In another shell:",
            f"  export DPUFLEET_SERVER={server.url}",
            f"  export DPUFLEET_TOKEN=$(cat {server.token_path})",
            "  dpufleet get dpus -o wide",
            "  dpufleet get dpus -l dpufleet.io/vendor=nvidia",
            "  dpufleet get bmcs",
            "  dpufleet get hosts",
            "  dpufleet describe dpu <name>",
            "  dpufleet watch dpus",
        ]
    )


def show_dpus(ctx: DemoContext) -> None:
    ref = ctx.client.resolve_kind("dpus")
    items = ctx.client.list(ref).items
    ctx.out("$ dpufleet get dpus -o wide")
    sys.stdout.flush()
    print_table(resource_table(ref, items, wide=True, with_project=False))


def run_demo(
    data_dir: Path | None = None,
    listen: str = DEMO_LISTEN,
    *,
    exit_when_ready: bool = False,
    stages: list[DemoStage] | None = None,
    out: Callable[[str], None] | None = None,
) -> None:
    """Start the embedded server, run the stages, show the DPUs, then stop or serve until Ctrl-C."""
    emit = out or (lambda line: print(line, flush=True))
    temporary = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="dpufleet-demo-")) if data_dir is None else data_dir
    server: EmbeddedServer | None = None
    try:
        # the provisioner polls the (time-scaled) emulated BMCs often; read when its controller is built
        saved = os.environ.get(POLL_ENV)
        os.environ[POLL_ENV] = saved or DEMO_POLL_SECONDS
        try:
            server = EmbeddedServer.start(directory, listen)
        finally:
            if saved is None:
                os.environ.pop(POLL_ENV, None)
        server.wait_ready()
        with Client(server.url, server.token()) as client:
            ctx = DemoContext(server, client, directory, emit)
            with ctx.cleanups:
                emit(connection_help(server, directory, temporary))
                emit("")
                emit("Applying an example flavor:")
                for stage in DEFAULT_STAGES if stages is None else stages:
                    stage(ctx)
                emit("")
                show_dpus(ctx)
                if exit_when_ready:
                    return
                emit("")
                emit("Serving; press Ctrl-C to stop.")
                with contextlib.suppress(KeyboardInterrupt):
                    server.thread.join()
    finally:
        if server is not None:
            server.stop()
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
