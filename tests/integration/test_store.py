"""The store, on SQLite and on PostgreSQL: what every client and controller relies on."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from dpufleet.api.errors import AlreadyExists, BadRequest, Conflict, Gone, Invalid, NotFound
from dpufleet.api.selectors import parse_selector
from dpufleet.store.store import ADDED, DELETED, MODIFIED, Store


def dpu(name: str, project: str = "default", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"kind": "DPU", "metadata": {"name": name, "project": project, "labels": labels or {}}, "spec": spec}


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["metadata"]["name"] for item in items]


# --- create / get / list ----------------------------------------------------------------------------------


def test_created_object_gets_identity_and_reads_back(store: Store) -> None:
    created = store.create(dpu("d1", serialNumber="MT123"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) == store.current_rv()
    assert store.get("DPU", "d1") == created
    assert store.get("dpus", "d1")["spec"]["serialNumber"] == "MT123"


def test_create_drops_user_supplied_status_and_system_metadata(store: Store) -> None:
    doc = dpu("d1")
    doc["status"] = {"phase": "Ready"}
    doc["metadata"].update(uid="mine", generation=7)
    created = store.create(doc)
    assert created["status"].get("phase") is None
    assert created["metadata"]["uid"] != "mine" and created["metadata"]["generation"] == 1


def test_list_filters_by_selector_and_project(store: Store) -> None:
    store.create(dpu("a1", labels={"vendor": "nvidia", "rack": "r1"}))
    store.create(dpu("a2", labels={"vendor": "intel", "rack": "r1"}))
    store.create(dpu("a3", labels={"vendor": "nvidia", "rack": "r2"}))
    store.create(dpu("b1", project="team-b", labels={"vendor": "nvidia"}))
    store.create({"kind": "Host", "metadata": {"name": "a1", "labels": {"vendor": "nvidia"}}})

    assert names(store.list("DPU").items) == ["a1", "a2", "a3", "b1"]
    assert names(store.list("DPU", project="default").items) == ["a1", "a2", "a3"]
    assert names(store.list("DPU", project="team-b").items) == ["b1"]
    assert names(store.list("DPU", selector=parse_selector("vendor=nvidia")).items) == ["a1", "a3", "b1"]
    assert names(store.list("DPU", "default", parse_selector("vendor=nvidia,rack!=r1")).items) == ["a3"]
    assert names(store.list("DPU", selector=parse_selector("rack notin (r1)")).items) == ["a3", "b1"]
    assert names(store.list("DPU", project="nobody").items) == []
    listing = store.list("DPU")
    assert listing.resource_version == store.current_rv()


def test_list_fields_returns_only_the_asked_paths_of_the_current_objects(store: Store) -> None:
    store.create(dpu("a1", labels={"vendor": "nvidia"}, image="os-1", hostRef="h1"))
    store.create(dpu("a2", labels={"vendor": "intel"}, image="os-2"))
    store.create(dpu("b1", project="team-b", labels={"vendor": "nvidia"}, image="os-1"))
    store.update_status("DPU", "a1", {"phase": "Ready", "firmware": [{"id": "os", "name": "x" * 500, "version": "1"}]})
    paths = [("spec",), ("status", "phase"), ("status", "diagnosis", "failureClass"), ("status", "my.dotted-key")]

    items = store.list_fields("DPU", paths, "default")

    assert names(items) == ["a1", "a2"]
    first = items[0]
    assert first["spec"] == store.get("DPU", "a1")["spec"]
    assert first["status"] == {"phase": "Ready"}  # absent paths are left out; the rest of status is not read
    assert first["metadata"]["labels"] == {"vendor": "nvidia"}
    assert first["metadata"]["resourceVersion"] == store.get("DPU", "a1")["metadata"]["resourceVersion"]
    assert "status" not in items[1]
    selected = store.list_fields("DPU", [("spec", "image")], selector=parse_selector("vendor=nvidia"))
    assert [(d["metadata"]["project"], d["spec"]["image"]) for d in selected] == [
        ("default", "os-1"),
        ("team-b", "os-1"),
    ]
    with pytest.raises(ValueError):
        store.list_fields("DPU", [])


def test_create_duplicate_is_already_exists_and_changes_nothing(store: Store) -> None:
    store.create(dpu("d1", serialNumber="first"))
    rv = store.current_rv()
    with pytest.raises(AlreadyExists, match="d1"):
        store.create(dpu("d1", serialNumber="second"))
    assert store.get("DPU", "d1")["spec"]["serialNumber"] == "first"
    assert store.current_rv() == rv
    store.create(dpu("d1", project="other"))  # same name in another project is another object


def test_invalid_documents_change_nothing(store: Store) -> None:
    store.create(dpu("d1"))
    rv = store.current_rv()
    bad = [
        dpu("D_1"),
        dpu("d2", colour="red"),
        {"kind": "Toaster", "metadata": {"name": "t"}},
        {"kind": "BMC", "metadata": {"name": "b"}, "spec": {}},
        {**dpu("d3"), "metadata": {"name": "d3", "resourceVersion": "5"}},
    ]
    for doc in bad:
        with pytest.raises((Invalid, BadRequest)):
            store.create(doc)
    with pytest.raises(Invalid):
        store.update({**store.get("DPU", "d1"), "spec": {"held": "sometimes"}})
    with pytest.raises(Invalid):
        store.update_status("DPU", "d1", {"conditions": [{"type": "Ready", "status": "Perhaps"}]})
    with pytest.raises(BadRequest):
        store.patch("DPU", "d1", ["not", "an", "object"])
    assert store.current_rv() == rv
    assert names(store.list("DPU").items) == ["d1"]
    assert [c.name for c in store.changes_since(0)] == ["d1"]


def test_get_and_delete_of_a_missing_object_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="ghost"):
        store.get("DPU", "ghost")
    rv = store.current_rv()
    with pytest.raises(NotFound, match="ghost"):
        store.delete("DPU", "ghost")
    with pytest.raises(NotFound):
        store.update(dpu("ghost"))
    assert store.current_rv() == rv


# --- concurrency, generation, status ----------------------------------------------------------------------


def test_stale_resource_version_is_a_conflict_and_changes_nothing(store: Store) -> None:
    v1 = store.create(dpu("d1", serialNumber="a"))
    v2 = store.update({**v1, "spec": {"serialNumber": "b"}})
    rv = store.current_rv()
    with pytest.raises(Conflict) as err:
        store.update({**v1, "spec": {"serialNumber": "c"}})
    assert err.value.details["currentResourceVersion"] == v2["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):
        store.update_status("DPU", "d1", {"phase": "X"}, resource_version=v1["metadata"]["resourceVersion"])
    with pytest.raises(Conflict):
        store.delete("DPU", "d1", resource_version=v1["metadata"]["resourceVersion"])
    with pytest.raises(Conflict):
        store.patch(
            "DPU", "d1", {"metadata": {"resourceVersion": v1["metadata"]["resourceVersion"]}, "spec": {"held": True}}
        )
    assert store.get("DPU", "d1") == v2
    assert store.current_rv() == rv


def test_generation_bumps_on_spec_change_only(store: Store) -> None:
    obj = store.create(dpu("d1"))
    obj = store.update({**obj, "spec": {"image": "os-2"}})
    assert obj["metadata"]["generation"] == 2

    obj["metadata"]["labels"] = {"rack": "r9"}
    obj["metadata"]["annotations"] = {"note": "moved"}
    obj = store.update(obj)
    assert obj["metadata"]["generation"] == 2 and obj["metadata"]["labels"] == {"rack": "r9"}

    obj = store.update_status("DPU", "d1", {"phase": "Ready"})
    assert obj["metadata"]["generation"] == 2

    obj = store.patch("DPU", "d1", {"spec": {"held": True}})
    assert obj["metadata"]["generation"] == 3
    obj = store.patch("DPU", "d1", {"metadata": {"labels": {"rack": None}}})
    assert obj["metadata"]["generation"] == 3 and obj["metadata"]["labels"] == {}


def test_a_write_that_changes_nothing_makes_no_change(store: Store) -> None:
    obj = store.create(dpu("d1"))
    rv = store.current_rv()
    assert store.update(obj) == obj
    store.update_status("DPU", "d1", obj["status"])
    assert store.current_rv() == rv


def test_status_is_written_only_through_update_status(store: Store) -> None:
    obj = store.create(dpu("d1"))
    with_status = store.update_status("DPU", "d1", {"phase": "Ready", "vendor": "nvidia"})
    assert with_status["status"]["phase"] == "Ready"

    attempt = {**with_status, "spec": {"held": True}, "status": {"phase": "Hacked"}}
    updated = store.update(attempt)
    assert updated["spec"]["held"] is True
    assert updated["status"]["phase"] == "Ready" and updated["status"]["vendor"] == "nvidia"

    patched = store.patch("DPU", "d1", {"status": {"phase": "Hacked"}})
    assert patched["status"]["phase"] == "Ready"
    via_status = store.patch("DPU", "d1", {"status": {"phase": "Installing"}}, status=True)
    assert via_status["status"] == {**updated["status"], "phase": "Installing"}
    assert via_status["spec"] == updated["spec"]
    assert store.get("DPU", "d1")["metadata"]["uid"] == obj["metadata"]["uid"]


def test_two_writers_of_one_object_exactly_one_wins(store: Store) -> None:
    """Each writer reads, then writes with the resourceVersion it read: one wins, one gets Conflict."""
    store.create(dpu("d1", serialNumber="start"))
    for round_ in range(15):
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def writer(who: str, barrier: threading.Barrier = barrier, outcomes: dict[str, str] = outcomes) -> None:
            seen = store.get("DPU", "d1")
            barrier.wait(timeout=10)
            try:
                store.update({**seen, "spec": {"serialNumber": f"{who}-{seen['metadata']['resourceVersion']}"}})
                outcomes[who] = "won"
            except Conflict:
                outcomes[who] = "conflict"

        threads = [threading.Thread(target=writer, args=(w,)) for w in ("alice", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes.values()) == ["conflict", "won"], f"round {round_}: {outcomes}"
        winner = next(w for w, o in outcomes.items() if o == "won")
        assert store.get("DPU", "d1")["spec"]["serialNumber"].startswith(f"{winner}-")


# --- deletion: finalizers and owners ----------------------------------------------------------------------


def test_finalizers_hold_an_object_until_removed(store: Store) -> None:
    doc = dpu("d1")
    doc["metadata"]["finalizers"] = ["dpufleet.io/wipe"]
    store.create(doc)
    since = store.current_rv()

    marked = store.delete("DPU", "d1")
    assert marked["metadata"]["deletionTimestamp"]
    held = store.get("DPU", "d1")
    assert held["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]

    with pytest.raises(Invalid, match="finalizers"):
        store.update({**held, "metadata": {**held["metadata"], "finalizers": ["dpufleet.io/wipe", "sneaky"]}})

    store.update({**held, "metadata": {**held["metadata"], "finalizers": []}})
    with pytest.raises(NotFound):
        store.get("DPU", "d1")
    types = [(c.type, c.name) for c in store.changes_since(since)]
    assert types == [(MODIFIED, "d1"), (DELETED, "d1")]


def test_deleting_an_object_already_being_deleted_changes_nothing(store: Store) -> None:
    """A repeated delete (a user retrying, a cascade reaching a marked dependent) is a no-op:
    no resourceVersion is used up, so the change log keeps no hole."""
    doc = dpu("d1")
    doc["metadata"]["finalizers"] = ["dpufleet.io/wipe"]
    store.create(doc)
    marked = store.delete("DPU", "d1")
    rv = store.current_rv()
    again = store.delete("DPU", "d1")
    assert again["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    assert store.get("DPU", "d1") == marked
    assert store.current_rv() == rv


def test_deleting_an_owner_cascades_to_its_dependents(store: Store) -> None:
    host = store.create({"kind": "Host", "metadata": {"name": "h1"}})
    ref = {"kind": "Host", "name": "h1", "uid": host["metadata"]["uid"]}
    plain = dpu("plain")
    plain["metadata"]["ownerReferences"] = [ref]
    guarded = dpu("guarded")
    guarded["metadata"].update(ownerReferences=[ref], finalizers=["dpufleet.io/wipe"])
    store.create(plain)
    store.create(guarded)
    store.create(dpu("stranger"))
    since = store.current_rv()

    store.delete("Host", "h1")

    with pytest.raises(NotFound):
        store.get("Host", "h1")
    with pytest.raises(NotFound):
        store.get("DPU", "plain")
    assert store.get("DPU", "guarded")["metadata"]["deletionTimestamp"]
    assert store.get("DPU", "stranger")["metadata"].get("deletionTimestamp") is None
    changes = {(c.type, c.kind, c.name) for c in store.changes_since(since)}
    assert changes == {(DELETED, "Host", "h1"), (DELETED, "DPU", "plain"), (MODIFIED, "DPU", "guarded")}


def test_owner_with_finalizers_cascades_only_once_really_gone(store: Store) -> None:
    host = store.create({"kind": "Host", "metadata": {"name": "h1", "finalizers": ["x.io/f"]}})
    child = dpu("child")
    child["metadata"]["ownerReferences"] = [{"kind": "Host", "name": "h1", "uid": host["metadata"]["uid"]}]
    store.create(child)
    store.delete("Host", "h1")
    assert store.get("DPU", "child")  # owner is only marked: dependents stay
    marked = store.get("Host", "h1")
    store.update({**marked, "metadata": {**marked["metadata"], "finalizers": []}})
    with pytest.raises(NotFound):
        store.get("DPU", "child")


# --- the change log ---------------------------------------------------------------------------------------


def test_changes_since_returns_every_change_in_order(store: Store) -> None:
    start = store.current_rv()
    a = store.create(dpu("a"))
    store.create({"kind": "Host", "metadata": {"name": "h"}})
    store.update({**a, "spec": {"held": True}})
    store.update_status("DPU", "a", {"phase": "Ready"})
    store.delete("DPU", "a")

    changes = store.changes_since(start)
    assert [(c.type, c.kind, c.name) for c in changes] == [
        (ADDED, "DPU", "a"),
        (ADDED, "Host", "h"),
        (MODIFIED, "DPU", "a"),
        (MODIFIED, "DPU", "a"),
        (DELETED, "DPU", "a"),
    ]
    rvs = [c.rv for c in changes]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs) and rvs[-1] == store.current_rv()
    assert changes[3].object()["status"]["phase"] == "Ready"
    assert changes[4].object()["metadata"]["name"] == "a"
    assert [c.name for c in store.changes_since(start, kinds={"Host"})] == ["h"]
    assert len(store.changes_since(start, limit=2)) == 2
    assert store.changes_since(store.current_rv()) == []


def test_compacted_history_is_gone(store: Store) -> None:
    for i in range(6):
        store.create(dpu(f"d{i}"))
    point = store.compact(keep=2)
    assert point == store.current_rv() - 2
    with pytest.raises(Gone, match="re-list"):
        store.changes_since(1)
    assert [c.name for c in store.changes_since(point)] == ["d4", "d5"]
    # objects themselves are untouched by compaction
    assert len(store.list("DPU").items) == 6
    assert store.compact(keep=100) == point  # never moves backwards


def test_interleaved_writers_never_let_a_watcher_skip_a_change(store: Store, store_url: str) -> None:
    """Two Store instances (as two server processes would) create concurrently while a watcher
    polls changes_since: resourceVersions are committed in order, so the watcher sees every one."""
    writers = [Store.open(store_url), Store.open(store_url)]
    watcher_store = Store.open(store_url)
    per_thread, threads_per_store = 40, 2
    seen: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(instance: Store, tag: str) -> None:
        try:
            for i in range(per_thread):
                instance.create(dpu(f"{tag}-{i}"))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    def watch() -> None:
        last = 0
        while True:
            done = stop.is_set()
            for change in watcher_store.changes_since(last):
                seen.append(change.rv)
                last = change.rv
            if done:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [
        threading.Thread(target=write, args=(instance, f"s{s}t{t}"))
        for s, instance in enumerate(writers)
        for t in range(threads_per_store)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        stop.set()
        watcher.join(timeout=30)
        for instance in (*writers, watcher_store):
            instance.close()
    assert not errors, errors
    log = [c.rv for c in store.changes_since(0, limit=10_000)]
    total = per_thread * threads_per_store * len(writers)
    assert len(log) == total == len(store.list("DPU").items)
    assert all(a < b for a, b in itertools.pairwise(log)), "resourceVersions must strictly increase"
    assert seen == log, "the concurrent watcher skipped or repeated a change"


def test_a_batch_of_creates_commits_together_and_failures_stay_alone(store: Store) -> None:
    """Group commit (what the API does under load): good documents are created, each with its
    own resourceVersion in order; a duplicate or an invalid document fails alone."""
    store.create(dpu("taken"))
    before = store.current_rv()
    results = store.create_many(
        [dpu("b-1"), dpu("taken"), {"kind": "DPU", "metadata": {"name": "Bad_Name"}}, dpu("b-2"), dpu("b-1")]
    )
    assert isinstance(results[0], dict) and isinstance(results[3], dict)
    assert isinstance(results[1], AlreadyExists)
    assert isinstance(results[2], Invalid) and "metadata.name" in results[2].message
    assert isinstance(results[4], AlreadyExists)  # the same name twice in one batch
    rvs = [int(results[0]["metadata"]["resourceVersion"]), int(results[3]["metadata"]["resourceVersion"])]
    assert rvs == [before + 1, before + 2]
    assert store.current_rv() == before + 2
    log = store.changes_since(before)
    assert [(c.rv, c.type, c.name) for c in log] == [(before + 1, ADDED, "b-1"), (before + 2, ADDED, "b-2")]
    assert store.get("DPU", "b-2")["metadata"]["resourceVersion"] == str(before + 2)


# --- the field mirror controllers count from (runtime/mirror.py) ---------------------------------


def test_field_mirror_matches_the_store_whatever_order_list_and_changes_arrive_in(store: Store) -> None:
    import asyncio

    from dpufleet.runtime.mirror import FieldMirror

    paths = [("spec", "image"), ("status", "phase")]
    store.create(dpu("a1", labels={"vendor": "nvidia"}, image="os-1"))
    store.create(dpu("a2", labels={"vendor": "intel"}))
    store.create(dpu("gone"))
    since = store.current_rv()
    mirror = FieldMirror(store, "DPU", paths)
    # changes that arrive before the first list (the feed is ahead of it) are not undone by the list
    store.update_status("DPU", "a1", {"phase": "Ready"})
    store.delete("DPU", "gone")
    for change in store.changes_since(since):
        mirror.apply(change)
    rows = asyncio.run(mirror.rows("default"))
    assert rows == store.list_fields("DPU", paths, "default")
    assert names(rows) == ["a1", "a2"] and rows[0]["status"] == {"phase": "Ready"}
    # an older change delivered late does not overwrite what is newer
    since = store.current_rv()
    first = store.patch("DPU", "a2", {"spec": {"image": "os-2"}})
    store.patch("DPU", "a2", {"spec": {"image": "os-3"}})
    changes = store.changes_since(since)
    for change in reversed(changes):
        mirror.apply(change)
    assert asyncio.run(mirror.rows("default"))[1]["spec"] == {"image": "os-3"}
    mirror.put(first)  # what a controller wrote, once a newer version is known, changes nothing
    assert asyncio.run(mirror.rows("default")) == store.list_fields("DPU", paths, "default")
    # selectors pick from the mirror; forget() reads the store again
    nvidia = asyncio.run(mirror.rows("default", parse_selector("vendor=nvidia")))
    assert names(nvidia) == ["a1"]
    store.create(dpu("a3"))  # not applied: only a fresh read sees it
    mirror.forget()
    assert names(asyncio.run(mirror.rows("default"))) == ["a1", "a2", "a3"]


def test_patch_many_writes_each_patch_alone_in_one_transaction(store: Store) -> None:
    a = store.create(dpu("a", image="os-1"))
    store.create(dpu("b", image="os-1"))
    store.update_status("DPU", "a", {"phase": "Ready"})
    b = store.get("DPU", "b")
    stale = a["metadata"]["resourceVersion"]  # a's status changed since
    since = store.current_rv()
    results = store.patch_many(
        "DPU",
        [
            ("a", "default", {"metadata": {"resourceVersion": stale}, "spec": {"image": "os-2"}}),
            (
                "b",
                "default",
                {"metadata": {"resourceVersion": b["metadata"]["resourceVersion"]}, "spec": {"image": "os-2"}},
            ),
            ("missing", "default", {"spec": {"image": "os-2"}}),
            ("b", "default", {"spec": {"hostRef": 5}}),
        ],
    )
    assert isinstance(results[0], Conflict) and isinstance(results[2], NotFound) and isinstance(results[3], Invalid)
    written = results[1]
    assert isinstance(written, dict) and written["spec"]["image"] == "os-2"
    assert written["metadata"]["generation"] == b["metadata"]["generation"] + 1
    assert store.get("DPU", "a")["spec"]["image"] == "os-1" and store.get("DPU", "a")["status"] == {"phase": "Ready"}
    assert [(c.name, c.type) for c in store.changes_since(since)] == [("b", MODIFIED)]  # nothing else written


def test_field_mirror_asked_for_current_rows_does_not_count_on_a_feed_that_is_behind(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from dpufleet.runtime import mirror as mirror_module

    monkeypatch.setattr(mirror_module, "CATCH_UP_SECONDS", 0.05)
    paths = [("status", "phase")]
    store.create(dpu("a1"))
    mirror = mirror_module.FieldMirror(store, "DPU", paths)
    assert "status" not in asyncio.run(mirror.rows("default"))[0]
    store.update_status("DPU", "a1", {"phase": "InstallFailed"})  # committed; its change not delivered
    mirror.put(store.patch("DPU", "a1", {"spec": {"image": "os-2"}}))  # its own write does not count as seen
    assert asyncio.run(mirror.rows("default"))[0]["status"] == {"phase": "InstallFailed"}  # put carries it
    store.update_status("DPU", "a1", {"phase": "Ready"})
    assert asyncio.run(mirror.rows("default"))[0]["status"] == {"phase": "InstallFailed"}  # the mirror as fed
    assert asyncio.run(mirror.rows("default", current=True))[0]["status"] == {"phase": "Ready"}  # as stored
