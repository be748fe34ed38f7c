"""The client's watch survives what a long-running watcher meets: compacted history and a lost stream."""

from __future__ import annotations

from dpufleet.client import Client, WatchEvent
from dpufleet.demo import EmbeddedServer


def _next(stream: object, wanted: str, name: str | None = None) -> WatchEvent:
    """The next event of this type (about this object): controllers may write other objects meanwhile."""
    for event in stream:  # type: ignore[attr-defined]
        if event.type == wanted and (name is None or event.object["metadata"]["name"] == name):
            return event
    raise AssertionError(f"stream ended before a {wanted} event")


def test_watch_from_compacted_history_relists_and_reports_the_difference(server: EmbeddedServer) -> None:
    with Client(server.url, server.token()) as client:
        kept = client.create({"kind": "DPU", "metadata": {"name": "kept", "labels": {"suite": "relist"}}})
        gone = client.create({"kind": "DPU", "metadata": {"name": "gone", "labels": {"suite": "relist"}}})
        old_rv = gone["metadata"]["resourceVersion"]
        client.delete("dpu", "gone")
        client.create({"kind": "DPU", "metadata": {"name": "new", "labels": {"suite": "relist"}}})
        server.server.store.compact(keep=0)

        stream = client.watch("dpus", selector="suite=relist", resource_version=old_rv)
        first = [next(stream), next(stream)]
        assert sorted((e.type, e.object["metadata"]["name"]) for e in first) == [("ADDED", "kept"), ("ADDED", "new")]

        client.patch("dpu", "kept", {"status": {"phase": "Ready"}}, status=True)
        modified = _next(stream, "MODIFIED", "kept")
        assert int(modified.resource_version) > int(kept["metadata"]["resourceVersion"])
