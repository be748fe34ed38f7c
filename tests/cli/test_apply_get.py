"""Given a running server, a user applies manifests and reads them back the way kubectl users expect."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from dpufleet.api.kinds import REGISTRY
from dpufleet.client import Client
from dpufleet.demo import EmbeddedServer

from .conftest import CLI

FLEET = """\
apiVersion: dpufleet.io/v1alpha1
kind: Host
metadata:
  name: rack7-host
spec:
  hostname: rack7-host.lab
---
apiVersion: dpufleet.io/v1alpha1
kind: DPU
metadata:
  name: bf3-a
  labels: {rack: r7, vendor: nvidia}
spec:
  hostRef: rack7-host
  serialNumber: MT0001
---
apiVersion: dpufleet.io/v1alpha1
kind: DPU
metadata:
  name: ipu-b
  labels: {rack: r7, vendor: intel}
spec:
  hostRef: rack7-host
  serialNumber: IPU0002
"""


def _table(text: str) -> list[list[str]]:
    """Rows of a kubectl-style table: cells are separated by runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def _headers(kind: str, *, wide: bool = False) -> list[str]:
    columns = REGISTRY[kind].columns
    return ["NAME", *(c.header for c in columns if wide or not c.wide_only), "AGE"]


def test_apply_creates_then_reports_unchanged_and_configured(cli: CLI, tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(FLEET)

    first = cli("apply", "-f", str(manifest))
    assert first.exit_code == 0, first.stderr
    assert first.stdout.splitlines() == ["host/rack7-host created", "dpu/bf3-a created", "dpu/ipu-b created"]

    again = cli("apply", "-f", str(manifest))
    assert again.stdout.splitlines() == ["host/rack7-host unchanged", "dpu/bf3-a unchanged", "dpu/ipu-b unchanged"]

    manifest.write_text(FLEET.replace("IPU0002", "IPU0003"))
    changed = cli("apply", "-f", str(manifest))
    assert changed.stdout.splitlines() == ["host/rack7-host unchanged", "dpu/bf3-a unchanged", "dpu/ipu-b configured"]
    assert json.loads(cli("get", "dpu", "ipu-b", "-o", "json").stdout)["spec"]["serialNumber"] == "IPU0003"


def test_apply_directory_and_stdin(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("kind: DPUFlavor\nmetadata: {name: flavor-b}\n")
    (tmp_path / "a.json").write_text('{"kind": "DPUFlavor", "metadata": {"name": "flavor-a"}}')
    (tmp_path / "notes.txt").write_text("not a manifest")
    result = cli("apply", "-f", str(tmp_path))
    assert result.stdout.splitlines() == ["dpuflavor/flavor-a created", "dpuflavor/flavor-b created"]

    piped = cli("apply", "-f", "-", input="kind: DPUFlavor\nmetadata: {name: flavor-c}\n")
    assert piped.stdout.strip() == "dpuflavor/flavor-c created"


def test_apply_keeps_finalizers_the_file_does_not_mention(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    manifest = tmp_path / "dpu.yaml"
    manifest.write_text("kind: DPU\nmetadata: {name: guarded}\nspec: {serialNumber: G1}\n")
    cli("apply", "-f", str(manifest))
    with Client(server.url, server.token()) as client:
        client.patch("dpu", "guarded", {"metadata": {"finalizers": ["dpufleet.io/teardown"]}})
    manifest.write_text("kind: DPU\nmetadata: {name: guarded}\nspec: {serialNumber: G2}\n")
    assert cli("apply", "-f", str(manifest)).stdout.strip() == "dpu/guarded configured"
    obj = yaml.safe_load(cli("get", "dpu", "guarded", "-o", "yaml").stdout)
    assert obj["metadata"]["finalizers"] == ["dpufleet.io/teardown"]
    assert obj["spec"]["serialNumber"] == "G2"


def test_get_table_reads_like_kubectl(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    cli("apply", "-f", str(tmp_path / "fleet.yaml"))

    for kind in ("dpus", "dpu", "DPU"):
        rows = _table(cli("get", kind, "-l", "rack=r7").stdout)
        assert rows[0] == _headers("DPU"), kind
        assert [r[0] for r in rows[1:]] == ["bf3-a", "ipu-b"]
        assert all(len(row) == len(rows[0]) for row in rows), "every cell is filled, <none> when unknown"
        assert re.fullmatch(r"\d+[sm]", rows[1][-1])

    wide = _table(cli("get", "dpus", "-l", "rack=r7", "-o", "wide").stdout)
    assert wide[0] == _headers("DPU", wide=True)
    assert len(wide[0]) > len(rows[0])
    assert all(len(row) == len(wide[0]) for row in wide)

    flavors = _table(cli("get", "flavors").stdout)
    assert flavors[0] == _headers("DPUFlavor")

    everywhere = _table(cli("get", "hosts", "-A").stdout)
    assert everywhere[0][:2] == ["PROJECT", "NAME"]
    assert everywhere[1][:2] == ["default", "rack7-host"]
    assert everywhere[0][2:] == _headers("Host")[1:]


def test_label_selectors(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    cli("apply", "-f", str(tmp_path / "fleet.yaml"))

    def names(selector: str) -> list[str]:
        return [row[0] for row in _table(cli("get", "dpus", "-l", selector).stdout)[1:]]

    assert names("vendor=nvidia") == ["bf3-a"]
    assert names("rack=r7,vendor!=nvidia") == ["ipu-b"]
    assert names("vendor in (intel,nvidia),rack=r7") == ["bf3-a", "ipu-b"]
    empty = cli("get", "dpus", "-l", "vendor=marvell")
    assert empty.exit_code == 0 and empty.stdout == ""
    assert "No dpus found" in empty.stderr


def test_yaml_and_json_output(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    cli("apply", "-f", str(tmp_path / "fleet.yaml"))

    one = yaml.safe_load(cli("get", "dpu", "bf3-a", "-o", "yaml").stdout)
    assert one["kind"] == "DPU" and one["metadata"]["labels"] == {"rack": "r7", "vendor": "nvidia"}
    assert one["metadata"]["resourceVersion"] and one["metadata"]["uid"]

    many = json.loads(cli("get", "dpus", "-l", "rack=r7", "-o", "json").stdout)
    assert many["kind"] == "DPUList"
    assert [item["metadata"]["name"] for item in many["items"]] == ["bf3-a", "ipu-b"]


def test_describe_shows_conditions_and_events_newest_last(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    cli("apply", "-f", str(tmp_path / "fleet.yaml"))
    with Client(server.url, server.token()) as client:
        dpu = client.get("dpu", "bf3-a")
        client.patch(
            "dpu",
            "bf3-a",
            {
                "status": {
                    "phase": "Installing",
                    "conditions": [
                        {"type": "Ready", "status": "False", "reason": "Installing", "message": "writing BFB"}
                    ],
                }
            },
            status=True,
        )
        for i, reason in enumerate(["Discovered", "InstallStarted"]):
            stamp = f"2030-01-01T00:0{i}:00Z"
            client.create(
                {
                    "kind": "Event",
                    "metadata": {"name": f"bf3-a.describe{i}"},
                    "involvedObject": {"kind": "DPU", "name": "bf3-a", "uid": dpu["metadata"]["uid"]},
                    "reason": reason,
                    "message": f"{reason} happened",
                    "source": "dpu-controller",
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                }
            )
        client.create(
            {
                "kind": "Event",
                "metadata": {"name": "ipu-b.other"},
                "involvedObject": {"kind": "DPU", "name": "ipu-b"},
                "reason": "NotAboutBf3",
            }
        )

    out = cli("describe", "dpu", "bf3-a").stdout
    assert "Name:         bf3-a" in out
    assert "vendor=nvidia" in out
    assert "phase: Installing" in out
    conditions = out[out.index("Conditions:") : out.index("Events:")]
    assert conditions.splitlines()[2].split()[:5] == ["Ready", "False", "Installing", "writing", "BFB"]
    events = out[out.index("Events:") :]
    assert events.index("Discovered") < events.index("InstallStarted")
    assert "NotAboutBf3" not in events


def test_delete_and_finalizers(cli: CLI, server: EmbeddedServer) -> None:
    cli("apply", "-f", "-", input="kind: DPU\nmetadata: {name: doomed}\n---\nkind: DPU\nmetadata: {name: held-back}\n")
    with Client(server.url, server.token()) as client:
        client.patch("dpu", "held-back", {"metadata": {"finalizers": ["dpufleet.io/wipe"]}})

    assert cli("delete", "dpu", "doomed").stdout.strip() == 'dpu "doomed" deleted'
    gone = cli("get", "dpu", "doomed")
    assert gone.exit_code == 1 and gone.stderr.strip() == "error: dpu 'doomed' not found in project 'default'"

    marked = cli("delete", "dpus", "held-back")
    assert marked.stdout.strip() == 'dpu "held-back" marked for deletion (waiting for finalizers: dpufleet.io/wipe)'
    assert yaml.safe_load(cli("get", "dpu", "held-back", "-o", "yaml").stdout)["metadata"]["deletionTimestamp"]
