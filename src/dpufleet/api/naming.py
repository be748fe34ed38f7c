"""Object names derived from what hardware reports (serial numbers, addresses)."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

_UNSAFE = re.compile(r"[^a-z0-9-]+")


def dns_label(text: str, max_len: int = 63) -> str:
    """Lower-case, '-' for anything else, trimmed; a hash suffix keeps long names unique."""
    clean = _UNSAFE.sub("-", text.lower()).strip("-") or "x"
    if len(clean) <= max_len:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return clean[: max_len - 9].rstrip("-") + "-" + digest


def dpu_name(serial: str) -> str:
    return dns_label(f"dpu-{serial}")


def bmc_name(address: str) -> str:
    """bmc-<host>-<port>[-<path>], e.g. bmc-198-51-100-7-443 or bmc-127-0-0-1-8443-bmc-b1."""
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "unknown").replace(".", "-").replace(":", "-")
    path = parts.path.strip("/")
    return dns_label("-".join(x for x in ("bmc", host, str(port), path) if x))


def host_name(text: str) -> str:
    return dns_label(text if text.startswith("host") else f"host-{text}")


def host_port(value: str, default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9101`` for IPv6) -> (host, port). Without a host, ``default_host`` when given.
    ValueError saying what is wrong (the caller names the option)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not (host or default_host):
        raise ValueError(f"{value!r} is not HOST:PORT")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{value!r}: the port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{value!r}: the port must be 0-65535")
    return host or str(default_host), number
