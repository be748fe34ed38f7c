"""Shell completion as a bash user gets it: installed by the command itself, then asked by bash on TAB."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpufleet.client import Client
from dpufleet.demo import EmbeddedServer

from .conftest import CLI

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "--norc", "-c", script], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def home(cli: CLI, tmp_path: Path) -> dict[str, str]:
    """A user's environment: their own HOME, the venv's dpufleet on PATH, the test server configured."""
    (tmp_path / "home").mkdir()
    return {
        **os.environ,
        **cli.env,
        "HOME": str(tmp_path / "home"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SHELL": "/bin/bash",
    }


def _complete(env: dict[str, str], line: str) -> list[str]:
    """What bash offers for the last word of `line` (a trailing space: a new, empty word), as on TAB."""
    words = line.split(" ")
    script = (
        "source ~/.bash_completions/dpufleet.sh\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_dpufleet_completion dpufleet\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    result = _bash(script, env)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_show_and_install_completion_then_tab_completes_kinds_and_names(
    home: dict[str, str], server: EmbeddedServer
) -> None:
    shown = _bash("dpufleet --show-completion", home)
    assert shown.returncode == 0, shown.stderr
    assert "_DPUFLEET_COMPLETE=complete_bash" in shown.stdout
    assert "complete -o default -F _dpufleet_completion dpufleet" in shown.stdout

    installed = _bash("dpufleet --install-completion", home)
    assert installed.returncode == 0, installed.stderr
    assert "bash completion installed" in installed.stdout
    assert "dpufleet.sh" in (Path(home["HOME"]) / ".bashrc").read_text()

    assert {"dpu", "dpus", "dpuflavor", "dpuflavors", "dpuset", "dpusets"} <= set(_complete(home, "dpufleet get dp"))
    assert "hosts" in _complete(home, "dpufleet describe ho")
    assert _complete(home, "dpufleet explain powera") == ["poweraction", "poweractions"]
    assert "explain" in _complete(home, "dpufleet expl")

    with Client(server.url, server.token()) as client:
        for name in ("tab-one", "tab-two", "other"):
            client.create({"kind": "DPU", "metadata": {"name": name}})
    assert _complete(home, "dpufleet get dpu tab-") == ["tab-one", "tab-two"]
    assert _complete(home, "dpufleet get dpu tab-one tab-") == ["tab-two"], "names already typed are not offered"
    assert "tab-one" in _complete(home, "dpufleet label dpus ")

    unreachable = {**home, "DPUFLEET_SERVER": "http://127.0.0.1:9"}
    assert _complete(unreachable, "dpufleet get dpu tab-") == [], "no server: nothing offered, no error in the prompt"
