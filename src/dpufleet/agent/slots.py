"""The A/B OS slots of a DPU, as files under its root: ``boot/slots/{a,b}`` and ``boot/slots/state.json``.

Each slot holds an OS image (``image.bin``) and its metadata (``meta.json``: version, sha256,
size, when and for which order it was written). ``state.json`` says which slot runs
(``active``), which one the next boot tries (``next``), how many boots there were and how
the last one went (``lastBoot``: the slot tried, whether it came up, and why not).

On a real DPU the slots are partitions and ``next`` a bootloader variable; the agent and the
emulator share this layout so the same agent code writes both. Writes are atomic (write a
temporary file, fsync, rename) so a crash leaves the old content or the new, never half.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SLOTS = ("a", "b")
SLOT_DIR = Path("boot/slots")


def slot_dir(root: Path) -> Path:
    return root / SLOT_DIR


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_state(root: Path) -> dict[str, Any] | None:
    """The slot state, or None when this machine has no A/B slots."""
    return _read_json(slot_dir(root) / "state.json")


def write_state(root: Path, state: dict[str, Any]) -> None:
    _atomic_write(slot_dir(root) / "state.json", json.dumps(state, indent=1, sort_keys=True).encode())


def read_meta(root: Path, slot: str) -> dict[str, Any] | None:
    return _read_json(slot_dir(root) / slot / "meta.json")


def image_path(root: Path, slot: str) -> Path:
    return slot_dir(root) / slot / "image.bin"


def write_slot_meta(root: Path, slot: str, meta: dict[str, Any]) -> None:
    _atomic_write(slot_dir(root) / slot / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())


def summary(root: Path) -> dict[str, Any] | None:
    """What the agent reports: the active slot and its version, the next boot, the last boot's outcome."""
    state = read_state(root)
    if state is None:
        return None
    active = str(state.get("active", "a"))
    slots = {}
    for slot in SLOTS:
        meta = read_meta(root, slot)
        if meta is not None:
            slots[slot] = {"version": meta.get("version"), "sha256": meta.get("sha256")}
    return {
        "active": active,
        "activeVersion": (slots.get(active) or {}).get("version"),
        "next": state.get("next", active),
        "bootCount": state.get("bootCount", 0),
        "lastBoot": state.get("lastBoot"),
        "slots": slots,
    }
