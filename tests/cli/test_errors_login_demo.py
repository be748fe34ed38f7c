"""Failures a user meets are one readable line and a non-zero exit; login and the demo work end to end."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpufleet.client import Client
from dpufleet.demo import EmbeddedServer
from support.signals import ctrl_c_as_at_a_terminal

from .conftest import CLI, Run


def assert_one_error_line(run: Run, *fragments: str, code: int = 1) -> None:
    assert run.exit_code == code, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_yaml_names_file_and_line_and_applies_nothing(cli: CLI, tmp_path: Path) -> None:
    good = tmp_path / "a.yaml"
    good.write_text("kind: DPUFlavor\nmetadata: {name: never-applied}\n")
    bad = tmp_path / "b.yaml"
    bad.write_text("kind: DPU\nmetadata:\n  name: x\n spec: {}\n")
    run = cli("apply", "-f", str(good), "-f", str(bad))
    assert_one_error_line(run, str(bad), "line 4", "invalid YAML")
    assert cli("get", "flavor", "never-applied").exit_code == 1


def test_server_refusal_names_document_and_earlier_ones_stay(cli: CLI, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "kind: DPUFlavor\nmetadata: {name: before-the-typo}\n---\n"
        "kind: DPU\nmetadata: {name: typo}\nspec: {colour: red}\n---\n"
        "kind: DPUFlavor\nmetadata: {name: after-the-typo}\n"
    )
    run = cli("apply", "-f", str(manifest))
    assert run.exit_code == 1
    assert run.stdout.strip() == "dpuflavor/before-the-typo created"
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: {manifest}: doc 2 (DPU/typo): DPU is invalid: spec.colour: unknown field"]
    assert "were applied" in run.stderr
    assert cli("get", "flavor", "after-the-typo").exit_code == 1


@pytest.mark.parametrize(
    ("args", "fragments", "code"),
    [
        (["get", "widgets"], ["unknown kind 'widgets'", "dpus"], 1),
        (["get", "dpu", "no-such-dpu"], ["dpu 'no-such-dpu' not found"], 1),
        (["get", "dpus", "-l", "a in (b"], ["label selector"], 1),
        (["apply", "-f", "/no/such/file.yaml"], ["/no/such/file.yaml: no such file or directory"], 1),
        (["get", "dpus", "-o", "xml"], ["--output", "table, wide, yaml, json"], 2),
        (["get", "dpus", "--colour"], ["No such option"], 2),
        (["describe", "dpu"], ["Missing argument"], 2),
    ],
)
def test_user_errors_are_one_line(cli: CLI, args: list[str], fragments: list[str], code: int) -> None:
    assert_one_error_line(cli(*args), *fragments, code=code)


def test_unreachable_server_and_bad_token_as_a_real_process(cli: CLI) -> None:
    run = cli.subprocess("get", "dpus", env={"DPUFLEET_SERVER": "http://127.0.0.1:9"})
    assert_one_error_line(run, "cannot reach the dpufleet server at http://127.0.0.1:9")
    run = cli.subprocess("get", "dpus", env={"DPUFLEET_TOKEN": "dpf_wrong"})
    assert_one_error_line(run, "invalid or revoked token")


def test_login_writes_private_config_that_later_commands_use(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    no_env = {"DPUFLEET_SERVER": "", "DPUFLEET_TOKEN": ""}
    before = cli("get", "dpus", env=no_env)
    assert before.exit_code == 1  # the default server is not ours

    bad = tmp_path / "bad.token"
    bad.write_text("dpf_not-a-token\n")
    refused = cli("login", "--server", server.url, "--token-file", str(bad), env=no_env)
    assert_one_error_line(refused, "invalid or revoked token")
    config = Path(cli.env["XDG_CONFIG_HOME"]) / "dpufleet" / "config.yaml"
    assert not config.exists()

    ok = cli("login", "--server", server.url, "--token-file", str(server.token_path), env=no_env)
    assert ok.exit_code == 0, ok.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert yaml.safe_load(config.read_text()) == {"server": server.url, "token": server.token()}

    after = cli("get", "dpus", env=no_env)
    assert after.exit_code == 0, after.stderr
    version = cli("version", env=no_env)
    assert f"at {server.url}" in version.stdout

    # the saved token is only sent to the server it was issued for
    elsewhere = cli("get", "dpus", env={"DPUFLEET_SERVER": "http://127.0.0.1:9", "DPUFLEET_TOKEN": ""})
    assert_one_error_line(elsewhere, "cannot reach")


def test_watch_prints_changes_and_stops_cleanly_on_ctrl_c(cli: CLI, server: EmbeddedServer) -> None:
    with Client(server.url, server.token()) as client:
        client.apply({"kind": "DPU", "metadata": {"name": "watched", "labels": {"watch": "me"}}})
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpufleet.main", "watch", "dpus", "-l", "watch=me"],
            env={**os.environ, **cli.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=ctrl_c_as_at_a_terminal,
        )
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().split() == ["EVENT", "NAME", "PHASE", "READY", "RESOURCEVERSION"]
            assert proc.stdout.readline().split()[:2] == ["ADDED", "watched"]
            client.patch("dpu", "watched", {"status": {"phase": "Ready"}}, status=True)
            assert proc.stdout.readline().split()[:3] == ["MODIFIED", "watched", "Ready"]
            client.delete("dpu", "watched")
            assert proc.stdout.readline().split()[:2] == ["DELETED", "watched"]
        finally:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "Traceback" not in stderr


def test_demo_discovers_and_inventories_the_emulated_fleet(cli: CLI) -> None:
    """The README's first command: the demo finds every emulated DPU through Redfish and the agents."""
    run = cli.subprocess("demo", "--exit-when-ready", "--listen", "127.0.0.1:0", timeout=120)
    assert run.exit_code == 0, run.stderr
    assert "Traceback" not in run.stderr
    out = run.stdout
    assert "export DPUFLEET_SERVER=http://127.0.0.1:" in out
    assert "export DPUFLEET_TOKEN=$(cat " in out
    assert "dpuflavor/default created" in out
    assert "discovered and inventoried 8/8 DPUs" in out
    table = out[out.index("$ dpufleet get dpus -o wide") :].splitlines()[1:]
    header = table[0].split()
    assert header[0] == "NAME"
    rows = [row.split() for row in table[1:] if row.strip()]
    assert len(rows) == 8
    vendors = {row[header.index("VENDOR")] for row in rows}
    assert vendors == {"NVIDIA", "Intel", "AMD", "Marvell"}
    hosts = {row[header.index("HOST")] for row in rows}
    assert hosts == {"host-000", "host-001", "host-002", "host-003"}  # every DPU paired with its host
