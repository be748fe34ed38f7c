"""An emulated DPU's data plane: a real Open vSwitch in the DPU's own network namespace.

For each DPU with networking on:

    namespace <tag>-wire     w-p0, w-p1      (the cables: what a switch port upstream would see)
                               | veth | veth
    namespace <tag>-dpu      p0, p1  pf0hpf, pf0vf0, pf0vf1   + ovs-vswitchd (netdev datapath)
                                       | veth   | veth   | veth
    namespace <tag>-host     pf0,           pf0vf0, pf0vf1     (the host's PF and VFs)

ovsdb-server and ovs-vswitchd run as children of this process, with OVS_RUNDIR/DBDIR/LOGDIR/
SYSCONFDIR in a temp dir of their own (the unix socket paths must stay short), vswitchd inside the
DPU's namespace so its taps stay off the host. The bridge is created empty and fail-mode secure with
no flows: it forwards nothing until the DPU's agent programs it. `stop` ends both daemons by PID
(waiting on them) and deletes the namespaces. Nothing here is addressed: tests and users put
addresses (198.51.100.0/24, 203.0.113.0/24 only) on the namespace ends they send from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..agent.network import NetworkConfig

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
BRIDGE = "br-dpu"
PHYSICAL = ("p0", "p1")
REPRESENTORS = (("pf0hpf", "pf0"), ("pf0vf0", "pf0vf0"), ("pf0vf1", "pf0vf1"))  # DPU side, host side
START_TIMEOUT = 10.0


class DataPlaneError(RuntimeError):
    pass


def _run(*argv: str, env: dict[str, str] | None = None, timeout: float = 15.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if done.returncode != 0:
        raise DataPlaneError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


def in_netns(namespace: str, *argv: str, timeout: float = 15.0) -> str:
    return _run("ip", "netns", "exec", namespace, *argv, timeout=timeout)


@dataclass
class DataPlane:
    """One DPU's namespaces, veths and Open vSwitch daemons."""

    tag: str  # short and unique per DPU on this machine: the namespaces' prefix
    rundir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dfl-ovs-")))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def dpu_ns(self) -> str:
        return f"{self.tag}-dpu"

    @property
    def wire_ns(self) -> str:
        return f"{self.tag}-wire"

    @property
    def host_ns(self) -> str:
        return f"{self.tag}-host"

    @property
    def db_socket(self) -> Path:
        return self.rundir / "db.sock"

    def env(self) -> dict[str, str]:
        d = str(self.rundir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}

    def agent_config(self) -> NetworkConfig:
        """What the DPU's agent is told about its switch (on hardware: the OS image's defaults)."""
        return NetworkConfig(ovsdb=f"unix:{self.db_socket}", bridge=BRIDGE, rundir=self.rundir, netns=self.dpu_ns)

    def vsctl(self, *args: str) -> str:
        return _run("ovs-vsctl", f"--db=unix:{self.db_socket}", "--timeout=10", *args, env=self.env())

    def start(self) -> DataPlane:
        try:
            self._namespaces()
            self._daemons()
            self.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev", "fail-mode=secure")
        except BaseException:
            self.stop()
            raise
        return self

    def _namespaces(self) -> None:
        for ns in (self.wire_ns, self.dpu_ns, self.host_ns):
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # The DPU's ports are switch ports, not hosts: no IPv6 autoconfiguration chatter out of them.
        in_netns(self.dpu_ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
        in_netns(self.dpu_ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
        pairs = [(p, self.wire_ns, f"w-{p}") for p in PHYSICAL] + [(d, self.host_ns, h) for d, h in REPRESENTORS]
        for dpu_end, peer_ns, peer_end in pairs:
            _run(
                "ip",
                "link",
                "add",
                dpu_end,
                "netns",
                self.dpu_ns,
                "type",
                "veth",
                "peer",
                "name",
                peer_end,
                "netns",
                peer_ns,
            )
            for ns, name in ((self.dpu_ns, dpu_end), (peer_ns, peer_end)):
                _run("ip", "-n", ns, "link", "set", name, "up")
            # The userspace datapath does not fill in checksums a veth left to offload.
            in_netns(peer_ns, "ethtool", "-K", peer_end, "tx", "off")

    def _daemons(self) -> None:
        d, env = self.rundir, self.env()
        _run("ovsdb-tool", "create", str(d / "conf.db"), str(SCHEMA), env=env)
        self._spawn(
            [
                "ovsdb-server",
                str(d / "conf.db"),
                f"--remote=punix:{self.db_socket}",
                f"--pidfile={d}/ovsdb.pid",
                f"--unixctl={d}/ovsdb.ctl",
                f"--log-file={d}/ovsdb.log",
            ]
        )
        self._wait_for(self.db_socket)
        _run("ovs-vsctl", f"--db=unix:{self.db_socket}", "--no-wait", "init", env=env)
        self._spawn(
            [
                "ip",
                "netns",
                "exec",
                self.dpu_ns,
                "ovs-vswitchd",
                f"unix:{self.db_socket}",
                f"--pidfile={d}/vsd.pid",
                f"--unixctl={d}/vsd.ctl",
                f"--log-file={d}/vsd.log",
            ]
        )
        self._wait_for(d / "vsd.ctl")

    def _spawn(self, argv: list[str]) -> None:
        self.procs.append(subprocess.Popen(argv, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def _wait_for(self, path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not path.exists():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise DataPlaneError(f"{proc.args!r} exited ({proc.returncode}); see the logs in {self.rundir}")
            if time.monotonic() > deadline:
                raise DataPlaneError(f"{path} did not appear within {START_TIMEOUT:.0f}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """End the daemons (by PID, waiting on them) and delete the namespaces and what is in them."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            with contextlib.suppress(DataPlaneError):
                _run("ip", "netns", "del", ns)
        self.namespaces.clear()
        shutil.rmtree(self.rundir, ignore_errors=True)


def data_plane_tag(index: int) -> str:
    """Namespaces unique to this process and DPU: `dfl<pid>-<index>`."""
    return f"dfl{os.getpid()}-{index}"
