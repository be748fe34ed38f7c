"""A user reads what a kind's fields mean (explain) and changes an object in their editor (edit)."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpufleet.client import Client
from dpufleet.demo import EmbeddedServer

from .conftest import CLI


def test_explain_a_kind_and_a_field_from_the_schema(cli: CLI) -> None:
    kind = cli("explain", "dpu")
    assert kind.exit_code == 0, kind.stderr
    assert kind.stdout.startswith("KIND:     DPU\nVERSION:  dpufleet.io/v1alpha1\n")
    fields = kind.stdout[kind.stdout.index("FIELDS:") :].splitlines()[1:]
    assert [line.split()[0] for line in fields if not line.startswith("    ")] == [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
        "status",
    ]

    image = cli("explain", "dpu.spec.image")
    assert "FIELD:    spec.image <string>" in image.stdout
    assert "desired Image" in image.stdout
    policy = cli("explain", "DPUs.spec.hostPolicy").stdout
    assert "Allowed values: none, taint, drain, hook" in policy
    conditions = cli("explain", "dpu.status.conditions").stdout
    assert "FIELD:    status.conditions <[]Object>" in conditions
    assert "type                <string>  -required-" in conditions
    assert "<map[string]string>" in cli("explain", "dpu.metadata").stdout


def test_explain_names_an_unknown_field_or_kind_in_one_line(cli: CLI) -> None:
    typo = cli("explain", "dpu.spec.imag")
    assert typo.exit_code == 1
    lines = typo.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: field 'imag' does not exist in DPU.spec; valid fields: hostRef, bmcRef")
    assert "image" in lines[0]
    unknown = cli("explain", "widgets")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error: unknown kind 'widgets'; known kinds: ")
    assert cli("explain", "dpu..spec").exit_code == 2


def test_explain_works_offline_from_the_built_in_registry(cli: CLI) -> None:
    offline = cli("explain", "host.spec.bootOrder", env={"DPUFLEET_SERVER": "http://127.0.0.1:9"})
    assert offline.exit_code == 0, offline.stderr
    assert "Allowed values: dpu-first, host-first, independent" in offline.stdout


@pytest.fixture
def published_dpu(server: EmbeddedServer) -> Iterator[None]:
    """The server publishes a DPU schema with a field this client has never heard of."""
    app = server.server.app
    saved = app.openapi_schema
    doc: dict[str, Any] = dict(app.openapi())
    schemas = dict((doc.get("components") or {}).get("schemas") or {})
    schemas["DPU"] = {
        "type": "object",
        "properties": {"spec": {"$ref": "#/components/schemas/FutureDPUSpec"}},
    }
    schemas["FutureDPUSpec"] = {
        "type": "object",
        "description": "what a newer server knows",
        "properties": {"offload": {"type": "array", "items": {"type": "string"}, "description": "offloads to run"}},
    }
    app.openapi_schema = {**doc, "components": {**(doc.get("components") or {}), "schemas": schemas}}
    try:
        yield
    finally:
        app.openapi_schema = saved


def test_explain_prefers_the_schema_the_server_publishes(cli: CLI, published_dpu: None) -> None:
    result = cli("explain", "dpu.spec")
    assert result.exit_code == 0, result.stderr
    assert "what a newer server knows" in result.stdout
    assert "offload  <[]string>" in result.stdout
    assert "FIELD:    spec.offload <[]string>" in cli("explain", "dpu.spec.offload").stdout


# --- edit ---------------------------------------------------------------------------------------------------


def _editor(tmp_path: Path, body: str) -> str:
    """An EDITOR that edits its file argument ($1) with a shell command, as a person would by hand."""
    script = tmp_path / "editor.sh"
    script.write_text("#!/bin/sh\nset -e\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def _make(server: EmbeddedServer, name: str) -> dict[str, Any]:
    with Client(server.url, server.token()) as client:
        return client.create(
            {"kind": "DPU", "metadata": {"name": name, "labels": {"a": "1"}}, "spec": {"serialNumber": "E1"}}
        )


def _get(server: EmbeddedServer, name: str) -> dict[str, Any]:
    with Client(server.url, server.token()) as client:
        return client.get("dpu", name)


def test_edit_replaces_the_object_with_what_was_saved(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    _make(server, "edit-me")
    editor = _editor(tmp_path, "sed -i -e 's/serialNumber: E1/serialNumber: E2/' -e 's/a: .1./b: \"2\"/' \"$1\"")
    result = cli("edit", "dpu", "edit-me", env={"EDITOR": editor, "VISUAL": ""})
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "dpu/edit-me edited"
    obj = _get(server, "edit-me")
    assert obj["spec"]["serialNumber"] == "E2"
    assert obj["metadata"]["labels"] == {"b": "2"}, "a label removed in the editor is removed"
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("dpufleet-edit-dpu-edit-me-*")), "temp file left"


def test_visual_wins_over_editor(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    _make(server, "edit-visual")
    visual = _editor(tmp_path, "sed -i 's/serialNumber: E1/serialNumber: V1/' \"$1\"")
    result = cli("edit", "dpu", "edit-visual", env={"VISUAL": visual, "EDITOR": "false"})
    assert result.exit_code == 0, result.stderr
    assert _get(server, "edit-visual")["spec"]["serialNumber"] == "V1"


@pytest.mark.parametrize(
    "body", [":", ': > "$1"', "sed -i 's/^/# /' \"$1\""], ids=["unchanged", "empty", "all-comments"]
)
def test_an_unchanged_or_empty_file_changes_nothing(
    cli: CLI, server: EmbeddedServer, tmp_path: Path, body: str
) -> None:
    name = f"edit-cancel-{len(body)}"
    before = _make(server, name)
    result = cli("edit", "dpu", name, env={"EDITOR": _editor(tmp_path, body), "VISUAL": ""})
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == "Edit cancelled, no changes made."
    assert _get(server, name)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_an_invalid_edit_names_the_field_and_keeps_the_copy(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    before = _make(server, "edit-bad")
    editor = _editor(tmp_path, "sed -i 's/serialNumber: E1/serialNumber: E1\\n  colour: blue/' \"$1\"")
    result = cli("edit", "dpu", "edit-bad", env={"EDITOR": editor, "VISUAL": ""})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dpu/edit-bad: "), lines
    assert "spec.colour: unknown field" in lines[0]
    kept = Path(lines[0].rsplit("your edit is kept in ", 1)[1])
    assert "colour: blue" in kept.read_text()
    kept.unlink()
    assert _get(server, "edit-bad")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_a_concurrent_change_is_a_conflict_not_an_overwrite(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    _make(server, "edit-race")
    # while the editor is open, someone else changes the object
    editor = _editor(
        tmp_path,
        f"{sys.executable} -m dpufleet.main annotate dpu edit-race changed-by=someone-else >/dev/null\n"
        "sed -i 's/serialNumber: E1/serialNumber: MINE/' \"$1\"",
    )
    result = cli("edit", "dpu", "edit-race", env={"EDITOR": editor, "VISUAL": ""})
    assert result.exit_code == 1
    assert "was changed by someone else" in result.stderr and "your edit is kept in " in result.stderr
    obj = _get(server, "edit-race")
    assert obj["spec"]["serialNumber"] == "E1"
    assert obj["metadata"]["annotations"] == {"changed-by": "someone-else"}
    kept = Path(result.stderr.strip().rsplit("your edit is kept in ", 1)[1])
    assert yaml.safe_load(kept.read_text())["spec"]["serialNumber"] == "MINE"
    kept.unlink()
