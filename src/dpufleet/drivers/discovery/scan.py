"""Network scan: which addresses and ports answer as Redfish services.

An anonymous GET of /redfish/v1 is allowed by the Redfish standard and tells the
vendor and product without credentials. Every probe has a timeout; a slow or
broken endpoint never holds up the rest of the scan.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from ..redfish.client import BMCUnreachable, NotRedfish, RedfishClient, RedfishError, tls_context
from ..redfish.inventory import parse_service_root


class ProbeOutcome(StrEnum):
    REDFISH = "redfish"
    NOT_REDFISH = "not-redfish"
    UNREACHABLE = "unreachable"
    ERROR = "error"


@dataclass(frozen=True)
class ProbeResult:
    url: str
    outcome: ProbeOutcome
    vendor: str | None = None
    product: str | None = None
    detail: str = ""


def scan_targets(endpoints: list[str], cidrs: list[str], ports: list[int], schemes: list[str]) -> Iterator[str]:
    """Explicit endpoints first, then every host address of every range, port and scheme."""
    seen: set[str] = set()
    for url in endpoints:
        if url not in seen:
            seen.add(url)
            yield url
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        hosts = [net.network_address] if net.num_addresses == 1 else list(net.hosts())
        for addr in hosts:
            host = f"[{addr}]" if addr.version == 6 else str(addr)
            for port in ports:
                for scheme in schemes:
                    url = f"{scheme}://{host}:{port}"
                    if url not in seen:
                        seen.add(url)
                        yield url


async def probe(http: aiohttp.ClientSession, url: str, timeout: float) -> ProbeResult:
    client = RedfishClient(url, None, http=http, timeout=timeout, retries=0)
    try:
        root = await client.service_root()
    except BMCUnreachable as exc:
        return ProbeResult(url, ProbeOutcome.UNREACHABLE, detail=str(exc))
    except NotRedfish as exc:
        return ProbeResult(url, ProbeOutcome.NOT_REDFISH, detail=str(exc))
    except RedfishError as exc:
        outcome = ProbeOutcome.NOT_REDFISH if exc.status in (404, 405) else ProbeOutcome.ERROR
        return ProbeResult(url, outcome, detail=str(exc))
    info = parse_service_root(root)
    return ProbeResult(url, ProbeOutcome.REDFISH, vendor=info.vendor, product=info.product)


async def scan(
    targets: Iterator[str],
    *,
    concurrency: int,
    timeout: float,
    verify: bool,
    on_result: Callable[[ProbeResult], Awaitable[None]],
) -> None:
    """Probe every target with at most `concurrency` probes in flight."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True, ssl=tls_context(verify))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=concurrency * 2)

        async def worker() -> None:
            while (url := await queue.get()) is not None:
                await on_result(await probe(http, url, timeout))

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            for url in targets:
                await queue.put(url)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
