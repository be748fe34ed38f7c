"""The manifests of examples/, read as a user's `dpufleet apply -f` reads them, and made site-specific.

The examples name the values a user changes for their site (the BMCs' password, the emulated BMCs'
loopback ports); `site_copy` writes a copy of examples/ with those values replaced, exactly the edit
examples/README.md tells a user to make.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpufleet.cli.apply import Manifest, load

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FLEET = EXAMPLES / "fleet"
PAYLOAD = EXAMPLES / "payloads" / "example-os.img"
PASSWORD_PLACEHOLDER = "CHANGE-ME"
FLEET_PORT = 8443  # `dpufleet sim up --listen 127.0.0.1:8443` in examples/README.md
RACK2_PORT = 8450  # `dpufleet sim up --per-bmc-ports --listen 127.0.0.1:8450`: its BMCs on 8450 and 8451


def manifests(directory: Path = EXAMPLES) -> list[Manifest]:
    """Every document of the directory's manifests (not its subfolders), in the order apply reads them."""
    return load([str(directory)])


def every_manifest() -> list[Manifest]:
    return manifests(EXAMPLES) + manifests(FLEET)


@dataclass(frozen=True)
class Site:
    """What differs between examples/README.md's emulated fleets and the ones a test starts."""

    fleet_port: int
    fleet_password: str
    rack2_port: int
    rack2_password: str


def _replace(path: Path, changes: dict[str, str]) -> None:
    text = path.read_text()
    for old, new in changes.items():
        text = text.replace(old, new)
    path.write_text(text)


def site_copy(site: Site, into: Path) -> Path:
    """A copy of examples/ with the site's ports and passwords, as a user edits theirs."""
    target = into / "examples"
    shutil.copytree(EXAMPLES, target)
    for path in (target / "fleet").glob("*.yaml"):
        _replace(
            path,
            {f"127.0.0.1:{FLEET_PORT}/": f"127.0.0.1:{site.fleet_port}/", PASSWORD_PLACEHOLDER: site.fleet_password},
        )
    for path in target.glob("*.yaml"):
        _replace(
            path,
            {
                f"127.0.0.1:{RACK2_PORT + 1}": f"127.0.0.1:{site.rack2_port + 1}",
                f"ports: [{RACK2_PORT}]": f"ports: [{site.rack2_port}]",
                PASSWORD_PLACEHOLDER: site.rack2_password,
            },
        )
    return target


def by_kind(docs: list[Manifest]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for manifest in docs:
        kinds.setdefault(str(manifest.doc.get("kind")), []).append(manifest.doc)
    return kinds
