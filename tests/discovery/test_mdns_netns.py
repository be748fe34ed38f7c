"""mDNS discovery across a real link: a BMC advertising `_redfish._tcp` in one network namespace is
found by `browse()` in another, as its Redfish URL.

Multicast never touches the host's network: two namespaces made for this test, joined by a veth
pair on 198.51.100.0/24, each side a subprocess run with `ip netns exec`. Needs root and `ip`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import IN_CI

pytestmark = pytest.mark.timeout(60)

ADVERTISED_ADDRESS, BROWSER_ADDRESS = "198.51.100.1", "198.51.100.2"

ADVERTISE = """
import asyncio, sys
from dpufleet.drivers.discovery.mdns import REDFISH_SERVICE, Advertiser

async def main() -> None:
    adv = Advertiser(REDFISH_SERVICE, "bmc-mdns-test", sys.argv[1], 8443, {"scheme": "http", "path": "/redfish/v1"})
    await adv.start()
    print("advertising", flush=True)
    try:
        await asyncio.wait_for(asyncio.to_thread(sys.stdin.read), timeout=30)  # until the test closes stdin
    except TimeoutError:
        pass
    await adv.close()

asyncio.run(main())
"""

BROWSE = """
import asyncio, dataclasses, json, sys
from dpufleet.drivers.discovery.mdns import browse

found = asyncio.run(browse(interfaces=[sys.argv[1]], seconds=float(sys.argv[2])))
print(json.dumps(dataclasses.asdict(found)))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Link:
    advertiser_ns: str
    browser_ns: str


@pytest.fixture
def link() -> Iterator[Link]:
    """Two fresh namespaces joined by a veth pair; always deleted afterwards."""
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "iproute2 (`ip`) is not installed"
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: the mDNS test must run)", pytrace=False)
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    a, b = f"dfm-a-{tag}", f"dfm-b-{tag}"
    created: list[str] = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", f"va{tag}", "netns", a, "type", "veth", "peer", "name", f"vb{tag}", "netns", b)
        for ns, dev, addr in ((a, f"va{tag}", ADVERTISED_ADDRESS), (b, f"vb{tag}", BROWSER_ADDRESS)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield Link(a, b)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)


def in_ns(ns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args]


def test_browse_finds_a_bmc_advertised_in_another_namespace(link: Link) -> None:
    advertiser = subprocess.Popen(
        in_ns(link.advertiser_ns, ADVERTISE, ADVERTISED_ADDRESS),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert advertiser.stdout is not None
        line = advertiser.stdout.readline()  # bounded by the advertiser's own 30 s and the test timeout
        assert line.strip() == "advertising", advertiser.stderr.read() if advertiser.stderr else ""
        browsed = subprocess.run(
            in_ns(link.browser_ns, BROWSE, BROWSER_ADDRESS, "2.0"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert browsed.returncode == 0, browsed.stderr
        found = json.loads(browsed.stdout.strip().splitlines()[-1])
        assert found["redfish"] == [f"http://{ADVERTISED_ADDRESS}:8443"]
        assert found["agents"] == []
    finally:
        if advertiser.stdin is not None:
            advertiser.stdin.close()
        try:
            advertiser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            advertiser.kill()
            advertiser.wait(timeout=10)


def test_browse_on_an_isolated_namespace_finds_nothing(link: Link) -> None:
    """Nothing advertised on the link: browse returns empty lists within its time, rather than hanging."""
    browsed = subprocess.run(
        in_ns(link.browser_ns, BROWSE, BROWSER_ADDRESS, "0.5"), capture_output=True, text=True, timeout=30, check=False
    )
    assert browsed.returncode == 0, browsed.stderr
    assert json.loads(browsed.stdout.strip().splitlines()[-1]) == {"redfish": [], "agents": []}
