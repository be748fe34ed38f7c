"""A stateful service's network sandbox on the DPU: a named network namespace that outlives its containers,
and the listening sockets the runtime holds in it (agent/services.py, `handoff`).

Every instance of such a service joins the namespace (`/run/netns/<name>`) instead of getting one of its
own, and receives the held sockets as fds 3.. (LISTEN_FDS, as systemd's socket activation passes them).
One socket, one queue: while an instance drains and the next starts, connections wait in it; none is
refused. The sockets are made inside the namespace from a thread of our own (setns(2) moves only the
calling thread), and a restarted agent takes them back from a running instance with pidfd_getfd(2).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import subprocess
import threading
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_SYS_PIDFD_OPEN = 434  # the same number on every architecture Linux has (since 5.3)
_SYS_PIDFD_GETFD = 438  # since 5.6
LISTEN_BACKLOG = 4096  # connections that wait while one instance hands over to the next

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    """The namespace or its sockets cannot be made (the reason says which, and why)."""


def netns_name(dpu: str, service: str) -> str:
    return f"dpufleet-{dpu}-{service}"[:200]


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def ensure_netns(name: str, ip: str = "ip") -> Path:
    """The named namespace, made (with its loopback up) if it is not there yet."""
    path = netns_path(name)
    if not path.exists():
        done = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0 and "exists" not in done.stderr:
            raise SandboxError(f"ip netns add {name}: {done.stderr.strip()[:300]}")
    done = subprocess.run(
        [ip, "-n", name, "link", "set", "lo", "up"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise SandboxError(f"bringing up loopback in {name}: {done.stderr.strip()[:300]}")
    return path


def delete_netns(name: str, ip: str = "ip") -> None:
    if netns_path(name).exists():
        subprocess.run([ip, "netns", "delete", name], capture_output=True, timeout=30, check=False)


def listening_sockets(netns: Path, ports: list[int]) -> dict[int, socket.socket]:
    """TCP sockets listening on each port (every address of the namespace), made inside `netns`."""
    made: dict[int, socket.socket] = {}
    failure: list[BaseException] = []

    def inside() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(netns, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise SandboxError(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
            try:
                for port in ports:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.bind(("0.0.0.0", port))
                    except OSError as exc:
                        sock.close()
                        raise SandboxError(f"port {port} in {netns.name}: {exc.strerror}") from None
                    sock.listen(LISTEN_BACKLOG)
                    made[port] = sock
            finally:
                _libc.setns(own, CLONE_NEWNET)  # never leave a thread in another namespace
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            os.close(own)
            os.close(target)

    worker = threading.Thread(target=inside, name="sandbox-sockets")
    worker.start()
    worker.join()
    if failure:
        for sock in made.values():
            sock.close()
        raise failure[0]
    return made


def take_sockets(pid: int, fds: list[int]) -> dict[int, socket.socket]:
    """The listening sockets a running instance holds as `fds` (a restarted agent's way back to them),
    keyed by the port each listens on."""
    pidfd = _libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise SandboxError(f"pidfd_open({pid}): {os.strerror(ctypes.get_errno())}")
    taken: dict[int, socket.socket] = {}
    try:
        for fd in fds:
            got = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if got < 0:
                code = ctypes.get_errno()
                raise SandboxError(f"pidfd_getfd({pid}, {fd}): {os.strerror(code or errno.EBADF)}")
            sock = socket.socket(fileno=got)
            taken[int(sock.getsockname()[1])] = sock
    except BaseException:
        for sock in taken.values():
            sock.close()
        raise
    finally:
        os.close(pidfd)
    return taken


def close_all(sockets: dict[int, socket.socket]) -> None:
    for sock in sockets.values():
        with contextlib.suppress(OSError):
            sock.close()
