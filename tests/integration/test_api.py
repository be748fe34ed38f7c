"""The HTTP API, served by a real uvicorn on 127.0.0.1, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
import stat
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dpufleet.api.kinds import REGISTRY
from dpufleet.client import Client
from support.postgres import PostgresServer
from support.server import BASE, RunningServer, threaded_server
from support.watch import rv_of, watch

SHA = "a" * 64
MINIMAL: dict[str, dict[str, Any]] = {
    "hosts": {"kind": "Host", "spec": {"hostname": "node-1"}},
    "bmcs": {"kind": "BMC", "spec": {"address": "http://127.0.0.1:9"}},
    "dpus": {"kind": "DPU", "spec": {"serialNumber": "MT0001"}},
    "images": {
        "kind": "Image",
        "spec": {"version": "1.0", "components": [{"name": "os", "type": "os", "version": "1.0", "sha256": SHA}]},
    },
    "dpuflavors": {"kind": "DPUFlavor", "spec": {"kernelParameters": ["iommu=pt"]}},
    "dpusets": {"kind": "DPUSet", "spec": {"selector": {"matchLabels": {"rack": "r1"}}}},
    "events": {"kind": "Event", "involvedObject": {"kind": "DPU", "name": "d1"}, "reason": "Tested"},
}
# One user-owned field per kind, and a new value for it.
CHANGE: dict[str, tuple[str, str, Any]] = {
    "hosts": ("spec", "hostname", "node-2"),
    "bmcs": ("spec", "address", "http://127.0.0.1:10"),
    "dpus": ("spec", "serialNumber", "MT0002"),
    "images": ("spec", "version", "1.1"),
    "dpuflavors": ("spec", "kernelParameters", ["iommu=on"]),
    "dpusets": ("spec", "paused", True),
    "events": ("", "message", "seen again"),
}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("api") / "data"
    db_url = None
    pg: PostgresServer | None = None
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres_server")
        db_url = pg.create_database()
    # API only: the fleet controllers would act on the BMCs these tests create, and change the store under them
    with threaded_server(data_dir, db_url, controllers=False) as running:
        yield running
    if pg is not None and db_url is not None:
        pg.drop_database(db_url)


@pytest.fixture(scope="module")
def client(api: RunningServer) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


@pytest.fixture
def project() -> str:
    """Each test works in its own project, so tests sharing the module's server don't meet."""
    return "t-" + uuid.uuid4().hex[:10]


def doc(plural: str, name: str, **extra: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(MINIMAL[plural]))
    body["metadata"] = {"name": name, **extra}
    return body


def coll(project: str, plural: str = "dpus") -> str:
    return f"{BASE}/projects/{project}/{plural}"


MERGE = {"Content-Type": "application/merge-patch+json"}


def current_rv(api: RunningServer) -> int:
    assert api.server is not None
    return api.server.store.current_rv()


# --- auth -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}, {"Authorization": "Bearer"}],
)
def test_requests_without_a_valid_token_are_refused(api: RunningServer, headers: dict[str, str]) -> None:
    for path in (f"{BASE}/dpus", f"{BASE}", "/metrics", "/version"):
        response = httpx.get(api.url + path, headers=headers, timeout=5)
        assert response.status_code == 401, path
        assert response.json()["reason"] == "Unauthorized"
    response = httpx.post(api.url + coll("default"), json=doc("dpus", "intruder"), headers=headers, timeout=5)
    assert response.status_code == 401


def test_bootstrap_token_file_is_private_and_only_its_hash_is_kept(api: RunningServer) -> None:
    token_file = api.data_dir / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(api.data_dir.stat().st_mode) == 0o700
    token = token_file.read_text().strip()
    assert token == api.token
    for path in api.data_dir.iterdir():
        if path.name != "admin.token" and path.is_file() and not path.name.startswith("dpufleet.db"):
            assert token not in path.read_text(errors="replace"), f"{path.name} holds the plain token"


def test_probes_and_openapi_need_no_token(api: RunningServer) -> None:
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(api.url + "/readyz").json() == {"status": "ready"}
    assert httpx.get(api.url + "/openapi.json").status_code == 200


def test_openapi_has_every_operation_and_schema_of_every_kind(api: RunningServer) -> None:
    """A generated client sees each kind: its paths, its operations, its schemas with their descriptions."""
    spec = httpx.get(api.url + "/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    for info in REGISTRY.values():
        coll_path = f"{BASE}/projects/{{project}}/{info.plural}"
        assert {"get", "post"} <= set(paths[coll_path]), info.kind
        assert "get" in paths[f"{BASE}/{info.plural}"], info.kind
        assert {"get", "put", "patch", "delete"} <= set(paths[coll_path + "/{name}"]), info.kind
        if info.has_status:
            assert {"get", "put", "patch"} <= set(paths[coll_path + "/{name}/status"]), info.kind
        else:
            assert coll_path + "/{name}/status" not in paths
        for watch_path in (f"{BASE}/watch/projects/{{project}}/{info.plural}", f"{BASE}/watch/{info.plural}"):
            watch_op = paths[watch_path]["get"]
            assert set(watch_op["responses"]["200"]["content"]) == {"application/x-ndjson"}, watch_path
            timeout = next(p for p in watch_op["parameters"] if p["name"] == "timeoutSeconds")["schema"]
            assert timeout["maximum"] >= timeout["default"] >= timeout["minimum"] >= 1
        create = paths[coll_path]["post"]
        assert create["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{info.kind}"
        }
        assert create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{info.kind}")
        assert create["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/Status")
        listed = paths[coll_path]["get"]
        assert listed["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{info.kind}List")
        assert {"labelSelector", "fieldSelector", "limit", "continue"} <= {p["name"] for p in listed["parameters"]}
        assert "watch" not in {p["name"] for p in listed["parameters"]}, "watching is its own operation"
        assert info.kind in schemas and f"{info.kind}List" in schemas
    dpu = schemas["DPU"]
    assert {"apiVersion", "kind", "metadata", "spec"} <= set(dpu["properties"])
    assert "description" in json.dumps(schemas[dpu["properties"]["spec"]["$ref"].rsplit("/", 1)[1]])


def test_discovery_lists_every_kind(client: httpx.Client) -> None:
    kinds = {k["plural"]: k for k in client.get(BASE).json()["kinds"]}
    assert set(kinds) == {info.plural for info in REGISTRY.values()}
    assert set(MINIMAL) <= set(kinds)
    assert kinds["events"]["hasStatus"] is False


# --- CRUD -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plural", sorted(MINIMAL))
def test_crud_of_every_kind(client: httpx.Client, project: str, plural: str) -> None:
    created = client.post(coll(project, plural), json=doc(plural, "obj-1", labels={"rack": "r1"}))
    assert created.status_code == 201, created.text
    obj = created.json()
    assert obj["metadata"]["project"] == project and obj["metadata"]["uid"]

    got = client.get(f"{coll(project, plural)}/obj-1")
    assert got.status_code == 200 and got.json() == obj

    client.post(coll(project, plural), json=doc(plural, "obj-2"))
    listing = client.get(coll(project, plural)).json()
    assert listing["kind"] == f"{MINIMAL[plural]['kind']}List"
    assert [i["metadata"]["name"] for i in listing["items"]] == ["obj-1", "obj-2"]
    assert int(listing["metadata"]["resourceVersion"]) >= int(obj["metadata"]["resourceVersion"])
    selected = client.get(coll(project, plural), params={"labelSelector": "rack=r1"}).json()
    assert [i["metadata"]["name"] for i in selected["items"]] == ["obj-1"]
    everywhere = client.get(f"{BASE}/{plural}").json()["items"]
    assert {"obj-1", "obj-2"} <= {i["metadata"]["name"] for i in everywhere if i["metadata"]["project"] == project}

    section, field, value = CHANGE[plural]
    if section:
        obj[section][field] = value
    else:
        obj[field] = value
    replaced = client.put(f"{coll(project, plural)}/obj-1", json=obj)
    assert replaced.status_code == 200, replaced.text
    stored = client.get(f"{coll(project, plural)}/obj-1").json()
    assert (stored[section] if section else stored)[field] == value
    assert int(stored["metadata"]["resourceVersion"]) > int(created.json()["metadata"]["resourceVersion"])

    deleted = client.delete(f"{coll(project, plural)}/obj-1")
    assert deleted.status_code == 200
    assert client.get(f"{coll(project, plural)}/obj-1").status_code == 404
    assert [i["metadata"]["name"] for i in client.get(coll(project, plural)).json()["items"]] == ["obj-2"]


def test_merge_patch_sets_and_removes_fields(client: httpx.Client, project: str) -> None:
    client.post(coll(project), json=doc("dpus", "d1", labels={"rack": "r1", "old": "x"}))
    headers = {"Content-Type": "application/merge-patch+json"}
    patch = {"metadata": {"labels": {"old": None, "new": "y"}}, "spec": {"held": True}}
    response = client.patch(f"{coll(project)}/d1", content=json.dumps(patch), headers=headers)
    assert response.status_code == 200, response.text
    obj = response.json()
    assert obj["metadata"]["labels"] == {"rack": "r1", "new": "y"}
    assert obj["spec"]["held"] is True and obj["spec"]["serialNumber"] == "MT0001"
    assert obj["metadata"]["generation"] == 2
    # plain application/json is accepted for PATCH too
    assert (
        client.patch(f"{coll(project)}/d1", json={"spec": {"serialNumber": None}}).json()["spec"].get("serialNumber")
        is None
    )


def test_status_subresource_changes_status_only(client: httpx.Client, project: str) -> None:
    created = client.post(coll(project), json=doc("dpus", "d1")).json()
    url = f"{coll(project)}/d1"

    response = client.put(
        f"{url}/status", json={"status": {"phase": "Ready", "vendor": "nvidia"}, "spec": {"held": True}}
    )
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["status"]["phase"] == "Ready"
    assert after["spec"] == created["spec"] and after["metadata"]["generation"] == 1

    obj = client.get(url).json()
    obj["status"] = {"phase": "Forged"}
    obj["spec"]["held"] = True
    replaced = client.put(url, json=obj).json()
    assert replaced["status"]["phase"] == "Ready", "PUT on the object must ignore status"
    assert replaced["spec"]["held"] is True

    patched = client.patch(
        f"{url}/status",
        content=json.dumps({"status": {"health": "OK"}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    assert patched["status"]["phase"] == "Ready" and patched["status"]["health"] == "OK"
    assert client.get(f"{url}/status").json()["status"] == patched["status"]
    stale = created["metadata"]["resourceVersion"]
    assert client.put(f"{url}/status", json={"metadata": {"resourceVersion": stale}, "status": {}}).status_code == 409


# --- watch ------------------------------------------------------------------------------------------------


def test_watch_streams_ndjson_events(client: httpx.Client, project: str) -> None:
    client.post(coll(project), json=doc("dpus", "existing"))
    with watch(client, coll(project)) as stream:
        assert stream.response.headers["content-type"].startswith("application/x-ndjson")
        first = stream.take(2, bookmarks=True)
        assert [(e["type"], e["object"]["metadata"].get("name")) for e in first] == [
            ("ADDED", "existing"),
            ("BOOKMARK", None),
        ]
        client.post(coll(project), json=doc("dpus", "new"))
        client.post(coll(project, "hosts"), json=doc("hosts", "not-a-dpu"))
        client.post(coll("other-" + project), json=doc("dpus", "elsewhere"))
        client.patch(f"{coll(project)}/new", json={"spec": {"held": True}})
        client.delete(f"{coll(project)}/existing")
        events = stream.take(3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "new"),
        ("MODIFIED", "new"),
        ("DELETED", "existing"),
    ]
    assert events[1]["object"]["spec"]["held"] is True


def test_watch_with_label_selector_only_sends_matching_objects(client: httpx.Client, project: str) -> None:
    with watch(client, coll(project), labelSelector="rack=r1") as stream:
        stream.take(1, bookmarks=True)
        client.post(coll(project), json=doc("dpus", "d-r2", labels={"rack": "r2"}))
        client.post(coll(project), json=doc("dpus", "d-r1", labels={"rack": "r1"}))
        (event,) = stream.take(1)
    assert event["object"]["metadata"]["name"] == "d-r1"


def test_a_selector_watch_sees_objects_leave_and_enter_its_selection(client: httpx.Client, project: str) -> None:
    client.post(coll(project), json=doc("dpus", "moving", labels={"rack": "r1"}))
    with watch(client, coll(project), labelSelector="rack=r1") as stream:
        assert [e["object"]["metadata"]["name"] for e in stream.take(1)] == ["moving"]
        client.patch(f"{coll(project)}/moving", json={"metadata": {"labels": {"rack": "r2"}}}, headers=MERGE)
        client.patch(f"{coll(project)}/moving", json={"spec": {"held": True}}, headers=MERGE)  # not in view
        client.patch(f"{coll(project)}/moving", json={"metadata": {"labels": {"rack": "r1"}}}, headers=MERGE)
        client.patch(f"{coll(project)}/moving", json={"spec": {"held": False}}, headers=MERGE)
        client.delete(f"{coll(project)}/moving")
        events = stream.take(4)
    assert [(e["type"], e["object"]["metadata"]["labels"]["rack"]) for e in events] == [
        ("DELETED", "r2"),  # it left the selection: the watcher drops it
        ("ADDED", "r1"),  # it came back
        ("MODIFIED", "r1"),
        ("DELETED", "r1"),
    ]


def test_watcher_that_reconnects_with_its_last_resource_version_misses_nothing(
    api: RunningServer, client: httpx.Client, project: str
) -> None:
    client.post(coll(project), json=doc("dpus", "d0"))
    with watch(client, coll(project)) as stream:
        stream.take(1)  # ADDED d0
        client.post(coll(project), json=doc("dpus", "d1"))
        (event,) = stream.take(1)
        last = rv_of(event)
    # disconnected: the fleet keeps changing
    client.post(coll(project), json=doc("dpus", "d2"))
    client.patch(f"{coll(project)}/d1", json={"spec": {"held": True}})
    client.put(f"{coll(project)}/d2/status", json={"status": {"phase": "Ready"}})
    client.post(coll(project, "hosts"), json=doc("hosts", "h1"))
    client.delete(f"{coll(project)}/d0")
    client.post(coll(project), json=doc("dpus", "d3"))

    expected = [
        (c.rv, c.type, c.name)
        for c in api.server.store.changes_since(last, kinds={"DPU"})  # type: ignore[union-attr]
        if c.project == project
    ]
    assert [(t, n) for _, t, n in expected] == [
        ("ADDED", "d2"),
        ("MODIFIED", "d1"),
        ("MODIFIED", "d2"),
        ("DELETED", "d0"),
        ("ADDED", "d3"),
    ]
    with watch(client, coll(project), resourceVersion=str(last)) as stream:
        events = stream.take(len(expected))
        client.post(coll(project), json=doc("dpus", "d4"))
        (live,) = stream.take(1)
    assert [(rv_of(e), e["type"], e["object"]["metadata"]["name"]) for e in events] == expected
    assert live["object"]["metadata"]["name"] == "d4" and rv_of(live) > expected[-1][0]


def test_watch_from_compacted_history_answers_410_asking_to_relist(
    api: RunningServer, client: httpx.Client, project: str
) -> None:
    first = client.post(coll(project), json=doc("dpus", "d1")).json()
    client.post(coll(project), json=doc("dpus", "d2"))
    client.post(coll(project), json=doc("dpus", "d3"))
    api.server.store.compact(keep=1)  # type: ignore[union-attr]
    response = client.get(
        coll(project), params={"watch": "true", "resourceVersion": first["metadata"]["resourceVersion"]}
    )
    assert response.status_code == 410
    assert response.json()["reason"] == "Expired" and "re-list" in response.json()["message"]


# --- bad input --------------------------------------------------------------------------------------------


def _bad_requests(project: str, stale_rv: str) -> list[tuple[str, str, dict[str, Any], int, str]]:
    base = coll(project)
    return [
        ("POST", base, {"content": b'{"kind": "DPU", "metadata": {"name": '}, 400, "not valid JSON"),
        ("POST", base, {"content": b""}, 400, "empty"),
        ("POST", base, {"json": [1, 2]}, 400, "JSON object"),
        ("POST", base, {"json": {"kind": "Toaster", "metadata": {"name": "t"}}}, 400, "Toaster"),
        ("POST", base, {"json": {"kind": "DPU", "metadata": {"name": "d"}, "spec": {"colour": "red"}}}, 422, "spec.colour"),
        ("POST", base, {"json": {"kind": "DPU", "metadata": {"name": "d"}, "spec": {"held": [1]}}}, 422, "spec.held"),
        ("POST", base, {"json": {"kind": "DPU", "metadata": {"name": "Bad_Name"}}}, 422, "metadata.name"),
        ("POST", base, {"json": {"kind": "DPU", "metadata": {"name": "d", "project": "x"}}}, 400, "metadata.project"),
        ("POST", base, {"content": b"name: d", "headers": {"Content-Type": "application/yaml"}}, 415, "Content-Type"),
        ("POST", base, {"content": b"x" * (1024 * 1024 + 1)}, 413, "limit"),
        ("POST", base, {"content": iter([b"x" * 700_000, b"x" * 700_000])}, 413, "limit"),  # chunked, no length
        ("PUT", f"{base}/d1", {"json": {"kind": "DPU", "metadata": {"name": "other"}}}, 400, "does not match"),
        ("PUT", f"{base}/d1", {"json": {"kind": "DPU", "metadata": {"name": "d1", "resourceVersion": stale_rv}}}, 409, "resourceVersion"),
        ("PATCH", f"{base}/d1", {"content": b"[1]", "headers": {"Content-Type": "application/merge-patch+json"}}, 400, "JSON object"),
        ("PATCH", f"{base}/d1", {"json": {"spec": {"held": True}}, "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
        ("PATCH", f"{base}/d1", {"json": {"metadata": {"resourceVersion": stale_rv}, "spec": {"held": True}}}, 409, "changed by someone else"),
        ("DELETE", f"{base}/ghost", {}, 404, "ghost"),
        ("DELETE", f"{base}/d1", {"params": {"resourceVersion": stale_rv}}, 409, "resourceVersion"),
        ("GET", base, {"params": {"labelSelector": "rack in r1"}}, 400, "label selector"),
        ("GET", f"{base}/ghost", {}, 404, "ghost"),
        ("GET", f"{BASE}/projects/{project}/toasters", {}, 404, ""),
    ]  # fmt: skip


def test_bad_input_gets_a_4xx_naming_the_problem_and_changes_nothing(
    api: RunningServer, client: httpx.Client, project: str
) -> None:
    v1 = client.post(coll(project), json=doc("dpus", "d1")).json()
    v2 = client.patch(f"{coll(project)}/d1", json={"spec": {"serialNumber": "MT9"}}).json()
    before_rv = current_rv(api)
    for method, url, kwargs, code, needle in _bad_requests(project, v1["metadata"]["resourceVersion"]):
        response = client.request(method, url, **kwargs)
        assert response.status_code == code, f"{method} {url} {kwargs.get('json')}: {response.text[:300]}"
        if needle:
            assert needle in response.json()["message"], f"{method} {url}: {response.json()['message']}"
    assert current_rv(api) == before_rv
    assert client.get(f"{coll(project)}/d1").json() == v2
    assert [i["metadata"]["name"] for i in client.get(coll(project)).json()["items"]] == ["d1"]


def test_a_document_of_another_kind_is_refused_by_a_kind_endpoint(
    api: RunningServer, client: httpx.Client, project: str
) -> None:
    """POSTing a Host to the dpus collection must not create a Host behind the user's back."""
    before = current_rv(api)
    response = client.post(coll(project, "dpus"), json=doc("hosts", "h1"))
    assert response.status_code == 400, response.text
    assert "Host" in response.json()["message"]
    assert current_rv(api) == before
    assert client.get(f"{coll(project, 'hosts')}/h1").status_code == 404


# --- metrics ----------------------------------------------------------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.fullmatch(re.escape(name) + r"\{(.*)\} (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def test_metrics_count_requests_and_record_latency(client: httpx.Client, project: str) -> None:
    route = f"{BASE}/projects/{{project}}/dpus/{{name}}"  # each kind has its own route templates
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.get(f"{coll(project)}/ghost").status_code == 404
    after = client.get("/metrics").text
    counted = _sample(after, "dpufleet_api_requests_total", method="GET", route=route, code="404")
    assert counted - _sample(before, "dpufleet_api_requests_total", method="GET", route=route, code="404") == 3
    assert _sample(after, "dpufleet_api_request_seconds_count", method="GET", route=route) >= 3
    assert _sample(after, "dpufleet_api_request_seconds_bucket", method="GET", route=route, le="+Inf") >= 3
    assert "dpufleet_api_watchers" in after


# --- pagination, field selectors, bounded watch, dry run ------------------------------------------------


def test_lists_come_in_pages_and_the_client_follows_them(
    api: RunningServer, client: httpx.Client, project: str
) -> None:
    for i in range(7):
        assert client.post(coll(project), json=doc("dpus", f"d{i}")).status_code == 201
    seen: list[str] = []
    params: dict[str, str] = {"limit": "3"}
    pages = 0
    while True:
        body = client.get(coll(project), params=params).json()
        pages += 1
        assert len(body["items"]) <= 3 and body["metadata"]["resourceVersion"]
        seen += [item["metadata"]["name"] for item in body["items"]]
        if "continue" not in body["metadata"]:
            break
        params["continue"] = body["metadata"]["continue"]
    assert (seen, pages) == ([f"d{i}" for i in range(7)], 3)
    with Client(api.url, api.token) as dpufleet:
        listed = dpufleet.list("dpus", project, page_size=2)
        assert [item["metadata"]["name"] for item in listed.items] == seen
        assert int(listed.resource_version) > 0


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"continue": "not-a-token"}, "continue"),
        ({"fieldSelector": "status.phase"}, "fieldSelector"),
        ({"fieldSelector": "status..phase=x"}, "fieldSelector"),
        ({"labelSelector": "a in b"}, "labelSelector"),
    ],
)
def test_a_bad_list_parameter_is_a_400_naming_it(
    client: httpx.Client, project: str, params: dict[str, str], needle: str
) -> None:
    response = client.get(coll(project), params=params)
    assert response.status_code == 400, response.text
    assert needle in response.json()["message"]


def test_a_continue_token_of_another_listing_is_refused(client: httpx.Client, project: str) -> None:
    for i in range(3):
        client.post(coll(project), json=doc("dpus", f"d{i}"))
    token = client.get(coll(project), params={"limit": "1"}).json()["metadata"]["continue"]
    response = client.get(coll(project, "hosts"), params={"continue": token})
    assert response.status_code == 400 and "continue" in response.json()["message"]


def test_field_selectors_filter_lists_and_watches(api: RunningServer, client: httpx.Client, project: str) -> None:
    for name, host in (("d1", "h1"), ("d2", "h2"), ("d3", "h1")):
        client.post(coll(project), json={**doc("dpus", name), "spec": {"hostRef": host}})
    client.patch(f"{coll(project)}/d3/status", json={"status": {"phase": "Ready"}}, headers=MERGE)
    listed = client.get(coll(project), params={"fieldSelector": "spec.hostRef=h1,status.phase!=Ready"}).json()
    assert [i["metadata"]["name"] for i in listed["items"]] == ["d1"]
    with Client(api.url, api.token) as dpufleet:
        ready = dpufleet.list("dpus", None, field_selector=f"status.phase=Ready,metadata.project={project}")
        assert [i["metadata"]["name"] for i in ready.items] == ["d3"]
    watch_path = f"{BASE}/watch/projects/{project}/dpus"
    with watch(client, watch_path, fieldSelector="spec.hostRef=h2", timeoutSeconds="5") as stream:
        assert [e["object"]["metadata"]["name"] for e in stream.take(1)] == ["d2"]
        client.patch(f"{coll(project)}/d1/status", json={"status": {"phase": "Ready"}}, headers=MERGE)
        client.patch(f"{coll(project)}/d2/status", json={"status": {"phase": "Ready"}}, headers=MERGE)
        event = stream.take(1)[0]
        assert (event["type"], event["object"]["metadata"]["name"]) == ("MODIFIED", "d2")


def test_a_watch_ends_cleanly_at_its_timeout_with_where_to_resume(client: httpx.Client, project: str) -> None:
    created = client.post(coll(project), json=doc("dpus", "d1")).json()
    started = time.monotonic()
    response = client.get(f"{BASE}/watch/projects/{project}/dpus", params={"timeoutSeconds": "1"}, timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    events = [json.loads(line) for line in response.text.splitlines() if line]
    assert events[0]["type"] == "ADDED" and events[0]["object"] == created
    assert events[-1]["type"] == "BOOKMARK" and int(rv_of(events[-1])) >= int(created["metadata"]["resourceVersion"])
    assert 0.9 <= elapsed < 5
    too_long = client.get(f"{BASE}/watch/projects/{project}/dpus", params={"timeoutSeconds": "100000"})
    assert too_long.status_code == 400 and "timeoutSeconds" in too_long.json()["message"]


def test_dry_run_writes_nothing_and_answers_as_the_write_would(
    api: RunningServer, client: httpx.Client, project: str
) -> None:
    dry = {"dryRun": "All"}

    def audited() -> list[dict[str, Any]]:
        return [
            r
            for r in client.get("/audit/v1/records", params={"limit": "1000"}).json()["items"]
            if r["project"] == project
        ]

    before = current_rv(api)
    created = client.post(coll(project), json=doc("dpus", "d1", labels={"rack": "r1"}), params=dry)
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["name"] == "d1" and created.json()["metadata"]["uid"]
    assert client.get(f"{coll(project)}/d1").status_code == 404
    assert current_rv(api) == before
    assert audited() == [], "a dry run leaves no audit record"
    invalid = client.post(coll(project), json={**doc("dpus", "d2"), "spec": {"nonsense": 1}}, params=dry)
    real_invalid = client.post(coll(project), json={**doc("dpus", "d2"), "spec": {"nonsense": 1}})
    assert invalid.status_code == real_invalid.status_code == 422
    assert invalid.json()["message"] == real_invalid.json()["message"]

    stored = client.post(coll(project), json=doc("dpus", "d1")).json()
    rv = current_rv(api)
    patched = client.patch(f"{coll(project)}/d1", json={"spec": {"hostRef": "h9"}}, params=dry, headers=MERGE)
    assert patched.status_code == 200 and patched.json()["spec"]["hostRef"] == "h9"
    assert patched.json()["metadata"]["generation"] == 2
    replaced = client.put(f"{coll(project)}/d1", json={**stored, "spec": {"hostRef": "h8"}}, params=dry)
    assert replaced.status_code == 200 and replaced.json()["spec"]["hostRef"] == "h8"
    status = client.patch(f"{coll(project)}/d1/status", json={"status": {"phase": "Ready"}}, params=dry, headers=MERGE)
    assert status.status_code == 200 and status.json()["status"]["phase"] == "Ready"
    duplicate = client.post(coll(project), json=doc("dpus", "d1"), params=dry)
    assert duplicate.status_code == 409
    stale = client.put(
        f"{coll(project)}/d1", json={**stored, "metadata": {**stored["metadata"], "resourceVersion": "999999999"}}, params=dry
    )
    assert stale.status_code == 409
    deleted = client.delete(f"{coll(project)}/d1", params=dry)
    assert deleted.status_code == 200
    assert client.get(f"{coll(project)}/d1").json() == stored
    assert current_rv(api) == rv, "no dry run moved the resourceVersion"
    assert client.post(coll(project), json=doc("dpus", "d3"), params={"dryRun": "yes"}).status_code == 400
