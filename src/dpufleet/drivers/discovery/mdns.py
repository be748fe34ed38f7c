"""mDNS/DNS-SD: browse for `_redfish._tcp` (BMCs, DSP0266 names this service type) and
`_dpufleet-agent._tcp` (our agents), and advertise an agent or an emulated BMC.

Multicast stays inside the network namespaces the tests create; pass the
interface addresses to use explicitly.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

REDFISH_SERVICE = "_redfish._tcp.local."
AGENT_SERVICE = "_dpufleet-agent._tcp.local."


@dataclass
class MdnsFound:
    redfish: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)


def _url(info: AsyncServiceInfo, default_scheme: str) -> str | None:
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses or info.port is None:
        return None
    props = {k.decode(): (v.decode() if v else "") for k, v in (info.properties or {}).items()}
    scheme = props.get("scheme") or default_scheme
    path = props.get("path", "").rstrip("/")
    if path.endswith("/redfish/v1"):
        path = path[: -len("/redfish/v1")]
    return f"{scheme}://{addresses[0]}:{info.port}{path}"


async def browse(interfaces: list[str] | None = None, seconds: float = 3.0) -> MdnsFound:
    """Browse for a few seconds and resolve what answered."""
    zc = AsyncZeroconf(interfaces=interfaces or "all", ip_version=IPVersion.V4Only)
    names: dict[str, set[str]] = {REDFISH_SERVICE: set(), AGENT_SERVICE: set()}

    def on_change(zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            names[service_type].add(name)

    browser = AsyncServiceBrowser(zc.zeroconf, list(names), handlers=[on_change])
    found = MdnsFound()
    try:
        await asyncio.sleep(seconds)
        for service_type, target, scheme in (
            (REDFISH_SERVICE, found.redfish, "https"),
            (AGENT_SERVICE, found.agents, "https"),
        ):
            for name in sorted(names[service_type]):
                info = AsyncServiceInfo(service_type, name)
                if await info.async_request(zc.zeroconf, 2000):
                    url = _url(info, scheme)
                    if url:
                        target.append(url)
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return found


class Advertiser:
    """Advertises one service until closed."""

    def __init__(self, service_type: str, instance: str, address: str, port: int, properties: dict[str, str]) -> None:
        self.info = ServiceInfo(
            service_type,
            f"{instance}.{service_type}",
            addresses=[socket.inet_aton(address)],
            port=port,
            properties=properties,
            server=f"{instance}.local.",
        )
        self.zc = AsyncZeroconf(interfaces=[address], ip_version=IPVersion.V4Only)

    async def start(self) -> None:
        await self.zc.async_register_service(self.info)

    async def close(self) -> None:
        await self.zc.async_unregister_service(self.info)
        await self.zc.async_close()
