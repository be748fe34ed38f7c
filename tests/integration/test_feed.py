"""The change feed under concurrent writers, in this process and in another: no watcher misses a change."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dpufleet.store.feed import ChangeFeed
from dpufleet.store.store import Store

pytestmark = pytest.mark.timeout(60)


def test_a_feed_subscriber_sees_every_change_in_order_with_local_and_foreign_writers(
    store: Store, store_url: str
) -> None:
    """Writes by this process reach watchers directly; writes by another process (here: a second
    Store on the same database) are read from the log. Mixed together, the watcher sees every
    change exactly once, in resourceVersion order."""
    foreign = Store.open(store_url)
    per_writer = 30
    writers = [("local-a", store), ("local-b", store), ("foreign", foreign)]
    total = per_writer * len(writers)

    async def main() -> list[int]:
        feed = ChangeFeed(store, poll_interval=0.05)
        await feed.start()
        try:
            since = store.current_rv()
            seen: list[int] = []

            async def consume() -> None:
                async for change in feed.changes(None, since):
                    seen.append(change.rv)
                    if len(seen) == total:
                        return

            consumer = asyncio.create_task(consume())
            await asyncio.sleep(0.05)

            def write(tag: str, instance: Store) -> None:
                for i in range(per_writer):
                    instance.create({"kind": "DPU", "metadata": {"name": f"{tag}-{i}"}})

            threads = [threading.Thread(target=write, args=w) for w in writers]
            for t in threads:
                t.start()
            await asyncio.wait_for(consumer, timeout=30)
            for t in threads:
                await asyncio.to_thread(t.join, 30)
            return seen
        finally:
            await feed.stop()

    try:
        seen = asyncio.run(main())
    finally:
        foreign.close()
    log = [c.rv for c in store.changes_since(0, limit=10_000)]
    assert len(log) == total
    assert seen == log
