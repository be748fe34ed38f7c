"""The work queue: de-duplicated keys, one worker per key, delayed and backed-off retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpufleet.runtime.queue import Backoff, WorkQueue

NO_JITTER = Backoff(base=0.01, cap=0.08, jitter=0.0)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def nothing_within(queue: WorkQueue[str], seconds: float = 0.15) -> bool:
    try:
        await asyncio.wait_for(queue.get(), seconds)
    except TimeoutError:
        return True
    return False


def test_a_key_added_twice_is_processed_once() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        await q.add("dpu-1")
        await q.add("dpu-2")
        await q.add("dpu-1")
        assert len(q) == 2
        assert [await q.get(), await q.get()] == ["dpu-1", "dpu-2"]
        assert await nothing_within(q)

    run(scenario)


def test_a_key_readded_while_processing_is_processed_again_after_done_and_not_before() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        await q.add("dpu-1")
        key = await q.get()
        await q.add("dpu-1")
        await q.add("dpu-1")
        assert await nothing_within(q), "a second worker must not get a key that is being processed"
        await q.done(key)  # type: ignore[arg-type]
        assert await q.get() == "dpu-1"
        await q.done("dpu-1")
        assert await nothing_within(q), "the repeated adds fold into one more visit"

    run(scenario)


def test_done_without_readd_does_not_requeue() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        await q.add("k")
        await q.done(await q.get())  # type: ignore[arg-type]
        assert await nothing_within(q)

    run(scenario)


def test_add_after_delivers_the_key_no_earlier_than_asked() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        start = time.monotonic()
        await q.add_after("later", 0.3)
        await q.add_after("sooner", 0.1)
        assert await q.get() == "sooner"
        assert await q.get() == "later"
        assert time.monotonic() - start >= 0.3

    run(scenario)


def test_a_key_asked_for_later_twice_is_visited_once_at_the_earliest_time() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        start = time.monotonic()
        await q.add_after("dpu-1", 0.4)
        await q.add_after("dpu-1", 0.1)
        await q.add_after("dpu-1", 0.3)
        assert len(q) == 1
        assert await q.get() == "dpu-1"
        assert 0.1 <= time.monotonic() - start < 0.3
        await q.done("dpu-1")
        assert await nothing_within(q, 0.5), "the later requests folded into the first visit"

    run(scenario)


def test_a_visit_supersedes_delayed_visits_asked_before_it_started_but_not_after() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        await q.add_after("polled", 0.2)  # a poll asked for by the last visit
        await q.add("polled")  # a change wakes it first
        assert await q.get() == "polled"
        started = time.monotonic()
        q.supersede("polled", started)  # this visit saw the current state: the old poll is not needed
        await q.done("polled")
        assert await nothing_within(q, 0.4)

        await q.add("woken")
        assert await q.get() == "woken"
        started = time.monotonic()
        await q.add_after("woken", 0.1)  # a change arrived while the visit ran: it must be seen
        q.supersede("woken", started)
        await q.done("woken")
        assert await asyncio.wait_for(q.get(), 1) == "woken"

    run(scenario)


def test_backoff_doubles_per_failure_up_to_the_cap_and_resets_on_forget() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue(backoff=NO_JITTER)
        delays = [await q.add_rate_limited("flaky") for _ in range(6)]
        assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.08, 0.08])
        assert q.failures("flaky") == 6
        assert await q.add_rate_limited("other") == pytest.approx(0.01), "backoff is per key"
        q.forget("flaky")
        assert q.failures("flaky") == 0
        assert await q.add_rate_limited("flaky") == pytest.approx(0.01)

    run(scenario)


def test_a_rate_limited_key_comes_back_after_its_delay() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue(backoff=Backoff(base=0.2, jitter=0.0))
        start = time.monotonic()
        await q.add_rate_limited("k")
        assert await q.get() == "k"
        assert time.monotonic() - start >= 0.2

    run(scenario)


def test_close_releases_waiting_workers() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        waiter = asyncio.create_task(q.get())
        await asyncio.sleep(0.05)
        await q.close()
        assert await asyncio.wait_for(waiter, 2) is None

    run(scenario)


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.001, 10),
    jitter=st.floats(0, 0.9),
    failures=st.integers(1, 40),
)
def test_jitter_stays_within_its_bounds(base: float, jitter: float, failures: int) -> None:
    backoff = Backoff(base=base, cap=60.0, jitter=jitter)
    raw = min(60.0, base * 2 ** (failures - 1))
    delay = backoff.delay(failures)
    assert raw * (1 - jitter) - 1e-9 <= delay <= raw * (1 + jitter) + 1e-9


def test_jitter_actually_spreads_retries() -> None:
    backoff = Backoff(base=1.0, jitter=0.2)
    assert len({round(backoff.delay(1), 6) for _ in range(50)}) > 10
