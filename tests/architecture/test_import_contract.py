"""The import contract (pyproject.toml, [tool.importlinter]) holds, and it does catch a violation.

`./run test` runs `lint-imports` before pytest; these tests keep the contract honest: the tree as
it is keeps every contract, and a copy of the tree with one forbidden import (the store reaching
up into the emulator) or one cycle breaks the contract with a message naming that import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path, config: Path) -> subprocess.CompletedProcess[str]:
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: install the test extra (pip install -e '.[test]')", pytrace=False)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), str(config), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "dpufleet", tree / "dpufleet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].lower().replace("0 broken", "")


def test_a_forbidden_import_fails_naming_it(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    target = tree / "dpufleet" / "store" / "feed.py"
    target.write_text(target.read_text() + "\nfrom dpufleet.sim import fleet as _fleet  # noqa\n")
    result = _lint(tree, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    assert "dpufleet.store.feed -> dpufleet.sim.fleet" in result.stdout


def test_a_cycle_fails_naming_it(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    target = tree / "dpufleet" / "api" / "meta.py"  # api.kinds imports api.meta: meta -> kinds closes a cycle
    target.write_text(target.read_text() + "\nfrom dpufleet.api import kinds as _kinds  # noqa\n")
    result = _lint(tree, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    assert ".meta -> .kinds" in result.stdout
