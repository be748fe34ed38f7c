"""Process-level settings for the long-running processes (the API server, `dpufleet controller`)."""

from __future__ import annotations

import gc
import sys

GC_THRESHOLDS = (20_000, 20, 20)
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits for it (CPython: 0.005)


def tune_gc() -> None:
    """A control plane keeps a large, long-lived heap (cached clients, queues, a parsed object per
    watched change) and allocates fast: with CPython's default thresholds (700, 10, 10) the cyclic
    collector's passes over that heap were a tenth of the server's time at 10,000 DPUs. What is
    loaded at start moves out of the collector's way (gc.freeze), and collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # The event loop (HTTP, pushed BMC events, every controller's awaits) shares the GIL with the store
    # threads: with the default 5 ms a busy store thread held the loop up 5 ms at a time.
    sys.setswitchinterval(SWITCH_INTERVAL)
