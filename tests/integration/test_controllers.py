"""The controller runtime end to end on a real store: change feed → queue → reconcile → status."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.api.errors import NotFound
from dpufleet.plane import Manager
from dpufleet.runtime.conditions import get_condition, set_condition
from dpufleet.runtime.controller import DONE, Key, Reconciler, Result
from dpufleet.runtime.events import EventRecorder, events_for
from dpufleet.runtime.queue import Backoff
from dpufleet.runtime.reaper import EventReaper
from dpufleet.store.store import Store, default_sqlite_url
from support.net import wait_until
from support.server import BASE, threaded_server
from support.watch import watch

pytestmark = pytest.mark.timeout(60)


def dpu(name: str) -> dict[str, Any]:
    return {"kind": "DPU", "metadata": {"name": name}, "spec": {"serialNumber": f"SN-{name}"}}


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "convergence") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s")


def run_with_manager(store: Store, reconcilers: list[Reconciler], scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the manager in the background while the scenario drives the store, then stop it."""

    async def main() -> None:
        manager = Manager(store, reconcilers)
        task = asyncio.create_task(manager.run())
        try:
            await asyncio.wait_for(scenario(), timeout=40)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


class ObserveReconciler(Reconciler):
    """Marks each DPU Observed for its current generation; optionally fails first."""

    kind = "DPU"
    backoff = Backoff(base=0.05, cap=1.0, jitter=0.0)

    def __init__(self, store: Store, fail_times: int = 0) -> None:
        self.store = store
        self.fail_times = fail_times
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.first_success: dict[str, int] = {}

    async def reconcile(self, key: Key) -> Result:
        self.calls[key.name].append(time.monotonic())
        attempt = len(self.calls[key.name])
        if attempt <= self.fail_times:
            raise RuntimeError(f"BMC of {key.name} did not answer (attempt {attempt})")
        try:
            obj = await asyncio.to_thread(self.store.get, "DPU", key.name, key.project)
        except NotFound:
            return DONE
        status = obj["status"]
        generation = obj["metadata"]["generation"]
        self.first_success.setdefault(key.name, attempt)
        if set_condition(status, "Observed", True, "Seen", generation=generation):
            await asyncio.to_thread(self.store.update_status, "DPU", key.name, status, key.project)
        return DONE


def observed_generation(store: Store, name: str) -> int | None:
    cond = get_condition(store.get("DPU", name)["status"], "Observed")
    return cond.get("observedGeneration") if cond and cond["status"] == "True" else None


def test_statuses_converge_for_existing_and_new_objects(store: Store) -> None:
    for i in range(5):
        store.create(dpu(f"before-{i}"))
    reconciler = ObserveReconciler(store)

    async def scenario() -> None:
        for i in range(5):
            await asyncio.to_thread(store.create, dpu(f"after-{i}"))
        names = [f"{w}-{i}" for w in ("before", "after") for i in range(5)]
        await eventually(lambda: all(observed_generation(store, n) == 1 for n in names), what="Observed on every DPU")
        await asyncio.to_thread(store.patch, "DPU", "after-0", {"spec": {"held": True}})
        await eventually(lambda: observed_generation(store, "after-0") == 2, what="the new generation observed")

    run_with_manager(store, [reconciler], scenario)
    assert set(reconciler.calls) == {f"{w}-{i}" for w in ("before", "after") for i in range(5)}


def test_a_failing_reconcile_is_retried_with_growing_backoff_then_succeeds(store: Store) -> None:
    store.create(dpu("flaky"))
    reconciler = ObserveReconciler(store, fail_times=3)

    async def scenario() -> None:
        await eventually(lambda: observed_generation(store, "flaky") == 1, what="success after retries")

    run_with_manager(store, [reconciler], scenario)
    calls = reconciler.calls["flaky"]
    assert len(calls) >= 4
    gaps = [b - a for a, b in itertools.pairwise(calls[:4])]
    for gap, floor in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert gap >= floor * 0.95, f"retry gaps {gaps} do not back off exponentially"
    assert reconciler.first_success["flaky"] == 4


class PollingReconciler(Reconciler):
    """Waits on something outside the store (say, a firmware flash): asks to be called back twice."""

    kind = "DPU"

    def __init__(self, requeue_after: float, requeues: int) -> None:
        self.requeue_after = requeue_after
        self.requeues = requeues
        self.calls: list[float] = []

    async def reconcile(self, key: Key) -> Result:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.requeues:
            return Result(requeue_after=self.requeue_after)
        return DONE


def test_requeue_after_brings_the_object_back_without_any_change(store: Store) -> None:
    store.create(dpu("flashing"))
    reconciler = PollingReconciler(requeue_after=0.3, requeues=2)

    async def scenario() -> None:
        await eventually(lambda: len(reconciler.calls) >= 3, what="two requeued visits")
        await asyncio.sleep(0.6)  # once it stops asking, no further visit comes

    run_with_manager(store, [reconciler], scenario)
    calls = reconciler.calls
    assert len(calls) == 3, f"visits at {[round(c - calls[0], 2) for c in calls]}"
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(calls))


def test_event_recorder_folds_repeats_into_one_event_with_a_count(store: Store) -> None:
    target = store.create(dpu("d1"))
    recorder = EventRecorder(store, source="test-controller")
    first = recorder.record(target, "RebootFailed", "BMC timeout", "Warning")
    recorder.record(target, "RebootFailed", "BMC timeout", "Warning")
    last = recorder.record(target, "RebootFailed", "BMC timeout", "Warning")
    recorder.record(target, "Rebooted", "ok")
    assert first is not None and last is not None

    events = events_for(store, "DPU", "d1")
    by_reason = {e["reason"]: e for e in events}
    assert set(by_reason) == {"RebootFailed", "Rebooted"}
    folded = by_reason["RebootFailed"]
    assert folded["count"] == 3 and folded["type"] == "Warning" and folded["source"] == "test-controller"
    assert folded["metadata"]["name"] == first["metadata"]["name"]
    assert folded["firstTimestamp"] <= folded["lastTimestamp"]
    assert folded["involvedObject"] == {
        "kind": "DPU",
        "name": "d1",
        "project": "default",
        "uid": target["metadata"]["uid"],
    }
    assert by_reason["Rebooted"]["count"] == 1
    assert len(store.list("Event").items) == 2


def test_event_reaper_deletes_events_once_past_their_ttl(store: Store) -> None:
    target = store.create(dpu("d1"))
    recorded = EventRecorder(store, "test").record(target, "Rebooted")
    assert recorded is not None
    created = time.monotonic()
    gone_at: list[float] = []

    def gone() -> bool:
        try:
            store.get("Event", recorded["metadata"]["name"])
        except NotFound:
            gone_at.append(time.monotonic())
            return True
        return False

    async def scenario() -> None:
        await eventually(gone, timeout=10, what="the event reaped")

    run_with_manager(store, [EventReaper(store, ttl=0.5)], scenario)
    assert gone_at[0] - created >= 0.45, "reaped before its TTL"
    assert store.get("DPU", "d1"), "only the event is reaped"


REAPER_SCRIPT = """
import asyncio, sys
from dpufleet.runtime.reaper import EventReaper
from dpufleet.plane import Manager
from dpufleet.store.store import Store
store = Store.open(sys.argv[1])
asyncio.run(Manager(store, [EventReaper(store, ttl=float(sys.argv[2]))]).run())
"""


def test_a_separate_controller_process_reaps_events_the_api_server_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with threaded_server(data_dir, controllers=False) as api, api.client() as client:
        url = f"{BASE}/projects/default/events"
        event = {
            "kind": "Event",
            "metadata": {"name": "ev-1"},
            "involvedObject": {"kind": "DPU", "name": "d1"},
            "reason": "Rebooted",
        }
        created = client.post(url, json=event)
        assert created.status_code == 201, created.text
        proc = subprocess.Popen(
            [sys.executable, "-c", REAPER_SCRIPT, default_sqlite_url(data_dir), "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            with watch(
                client, url, read_timeout=15, resourceVersion=created.json()["metadata"]["resourceVersion"]
            ) as stream:
                (deleted,) = stream.take(1)
            assert (deleted["type"], deleted["object"]["metadata"]["name"]) == ("DELETED", "ev-1")
            assert client.get(f"{url}/ev-1").status_code == 404
            wait_until(lambda: proc.poll() is None, timeout=1, what="the controller process to keep running")
        finally:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
        assert b"Traceback" not in out, out.decode()[-2000:]
        assert httpx.get(api.url + "/readyz").status_code == 200


class StampReconciler(Reconciler):
    """Writes a fresh timestamp into status on every visit, as the BMC controller writes lastSeen."""

    kind = "DPU"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: dict[str, int] = defaultdict(int)

    async def reconcile(self, key: Key) -> Result:
        self.calls[key.name] += 1
        await asyncio.to_thread(
            self.store.update_status, "DPU", key.name, {"lastSeen": f"{time.monotonic()}"}, key.project
        )
        return DONE


def test_a_controller_is_not_woken_by_its_own_status_writes_but_by_spec_and_metadata(store: Store) -> None:
    """Given a controller that writes status on every visit, its own writes do not make it loop
    (hammering hardware); a spec or label change by a user wakes it at once."""
    stamp = StampReconciler(store)

    async def scenario() -> None:
        await asyncio.to_thread(store.create, dpu("quiet"))
        await eventually(lambda: stamp.calls["quiet"] >= 1, what="first reconcile")
        await asyncio.sleep(1.0)
        assert stamp.calls["quiet"] == 1  # its own status write did not wake it
        await asyncio.to_thread(store.patch, "DPU", "quiet", {"metadata": {"labels": {"rack": "r9"}}})
        await eventually(lambda: stamp.calls["quiet"] == 2, what="reconcile after a label change")
        await asyncio.to_thread(store.patch, "DPU", "quiet", {"spec": {"unschedulable": True}})
        await eventually(lambda: stamp.calls["quiet"] == 3, what="reconcile after a spec change")
        await asyncio.sleep(0.5)
        assert stamp.calls["quiet"] == 3

    run_with_manager(store, [stamp], scenario)
