"""nats-py, loaded without aiohttp.

nats-py imports aiohttp when it is installed, for a websocket transport (ws://, wss://) the agent never uses:
it dials the bus over nats:// or tls://. aiohttp is 11 MiB of the agent's resident memory, a quarter of it.
So, unless something in this process already loaded aiohttp, nats-py is imported as if aiohttp were absent
(its own documented fallback: the websocket transport then says it needs aiohttp), and aiohttp stays
importable for anyone else afterwards.
"""

from __future__ import annotations

import sys
from types import ModuleType


def _load() -> ModuleType:
    if "aiohttp" in sys.modules:
        import nats

        return nats
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # import aiohttp raises ImportError
    try:
        import nats
        import nats.aio.client
    finally:
        if "aiohttp" in sys.modules and sys.modules["aiohttp"] is None:
            del sys.modules["aiohttp"]
    return nats


nats = _load()
NATS = nats.aio.client.Client
WEBSOCKET_SCHEMES = ("ws://", "wss://")
