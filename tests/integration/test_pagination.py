"""Paged lists and field selectors in the store, on SQLite and on PostgreSQL.

Given objects that exist for the whole of a listing and others created and deleted meanwhile, when a
client lists page by page, then it sees every object that existed throughout exactly once, in
(project, name) order, whatever the page size, selector or concurrent writes.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import orjson
import pytest

from dpufleet.api.selectors import SelectorError, parse_field_selector, parse_selector
from dpufleet.store.store import Store


def dpu(name: str, project: str, host: str | None = None, **labels: str) -> dict[str, Any]:
    spec = {"hostRef": host} if host else {}
    return {"kind": "DPU", "metadata": {"name": name, "project": project, "labels": labels}, "spec": spec}


def page_through(store: Store, limit: int, **filters: Any) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    after = None
    for _ in range(10_000):
        page = store.list_page("DPU", limit=limit, after=after, **filters)
        assert len(page.items) <= limit
        keys += [(doc["metadata"]["project"], doc["metadata"]["name"]) for doc in map(orjson.loads, page.items)]
        if page.next_key is None:
            return keys
        after = page.next_key
    raise AssertionError("the listing never ended")


@pytest.mark.timeout(120)
def test_paging_under_concurrent_creates_and_deletes_sees_each_lasting_object_once(store: Store) -> None:
    projects = ("p-a", "p-b", "p-c")
    lasting = {(p, f"d-{i:03d}") for p in projects for i in range(0, 240, 2)}
    on_h1 = {(p, n) for p, n in lasting if int(n[2:]) % 4 == 0}
    for project, name in sorted(lasting):
        store.create(dpu(name, project, "h1" if (project, name) in on_h1 else "h2", rack="r1"))
    stop = threading.Event()
    churned: list[int] = []

    def churn() -> None:  # odd names, between the lasting ones in the listing order; some on h1
        rng = random.Random(7)
        while not stop.is_set():
            project, name = rng.choice(projects), f"d-{rng.randrange(1, 240, 2):03d}"
            try:
                store.create(dpu(name, project, rng.choice(("h1", "h2")), rack="r1"))
            except Exception:
                store.delete("DPU", name, project)
            churned.append(1)

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    try:
        for limit, filters, expected in (
            (7, {}, lasting),
            (50, {"selector": parse_selector("rack=r1")}, lasting),
            (5, {"fields": parse_field_selector("spec.hostRef=h1")}, on_h1),
            (9, {"fields": parse_field_selector("spec.hostRef!=h1,metadata.namespace=p-b")}, None),
        ):
            keys = page_through(store, limit, **filters)
            assert len(keys) == len(set(keys)), f"an object was listed twice (limit {limit}, {filters})"
            assert keys == sorted(keys), "pages come in (project, name) order"
            if expected is None:
                expected = {(p, n) for p, n in lasting - on_h1 if p == "p-b"}
                assert {p for p, _ in keys} <= {"p-b"}
            assert expected <= set(keys), f"missed {sorted(expected - set(keys))[:5]} (limit {limit}, {filters})"
            if "fields" in filters and filters["fields"].to_string() == "spec.hostRef=h1":
                for project, name in keys:  # churned objects too: each one matched when it was read
                    assert (project, name) in on_h1 or int(name[2:]) % 2 == 1
    finally:
        stop.set()
        writer.join(timeout=30)
    assert len(churned) > 10, "the writer ran during the listings"


def test_a_page_is_one_more_than_needed_to_know_whether_more_follow(store: Store) -> None:
    for i in range(6):
        store.create(dpu(f"d{i}", "p"))
    first = store.list_page("DPU", "p", limit=3)
    second = store.list_page("DPU", "p", limit=3, after=first.next_key)
    assert [orjson.loads(d)["metadata"]["name"] for d in first.items + second.items] == [f"d{i}" for i in range(6)]
    assert first.next_key == ("p", "d2") and second.next_key is None
    assert store.list_page("DPU", "p").next_key is None  # no limit: the whole list


def test_field_selector_compares_values_as_text_and_missing_as_empty(store: Store) -> None:
    store.create(dpu("a", "p", "h1"))
    store.create(dpu("b", "p", "h2"))
    store.create({**dpu("c", "p"), "spec": {"held": True}})
    store.update_status("DPU", "a", {"phase": "Ready", "observedGeneration": 1}, "p")

    def listed(text: str) -> list[str]:
        page = store.list_page("DPU", "p", fields=parse_field_selector(text))
        return [orjson.loads(d)["metadata"]["name"] for d in page.items]

    assert listed("spec.hostRef=h1") == ["a"]
    assert listed("spec.hostRef==h1") == ["a"]
    assert listed("spec.hostRef!=h1") == ["b", "c"]  # c has no host: != matches it
    assert listed("spec.hostRef=") == ["c"]
    assert listed("spec.held=true") == ["c"]
    assert listed("spec.held!=true") == ["a", "b"]
    assert listed("status.phase=Ready,status.observedGeneration=1") == ["a"]
    assert listed("status.observedGeneration=01") == []  # compared as JSON writes the number
    assert listed("metadata.name=b") == ["b"]
    assert listed("metadata.name!=b,metadata.project=p") == ["a", "c"]
    assert listed("spec=h1") == []  # an object equals no value
    labels = parse_selector("rack=r9")
    assert store.list_page("DPU", "p", labels, parse_field_selector("spec.hostRef=h1")).items == []


@pytest.mark.parametrize("text", ["status.phase", "status.phase>Ready", "=Ready", "status..phase=x", "a b=c"])
def test_a_field_selector_that_does_not_parse_says_why(text: str) -> None:
    with pytest.raises(SelectorError, match="field selector"):
        parse_field_selector(text)
