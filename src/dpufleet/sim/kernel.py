"""The emulated DPU's kernel, for its kernel modules: `insmod` and `rmmod` over the emulated OS root.

There is no DPU kernel here to load a module into (nor should a test load one into this machine's),
so the emulated DPU's agent runs these in place of the real tools, as commands, the way it would run
insmod and rmmod on a DPU:

    python -m dpufleet.sim.kernel --root ROOT insmod FILE [param=value ...]
    python -m dpufleet.sim.kernel --root ROOT rmmod NAME

`insmod` refuses what a kernel refuses: a file that is not an ELF relocatable object, one with no
`.modinfo` section naming the module ("Invalid module format"), a module already loaded ("File
exists"), a parameter not of the form name=value ("Invalid parameters"). It then lists the module in
ROOT/proc/modules and writes its parameters under ROOT/sys/module/NAME/parameters/. `rmmod` takes it
away ("is not currently loaded" otherwise). A boot of the emulated DPU (osroot.boot_kernel) empties
both, as a real boot does. Messages and exit statuses are kmod's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import sys
from pathlib import Path

_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
ET_REL = 1


def modinfo(data: bytes) -> dict[str, str] | None:
    """The `.modinfo` of an ELF64 relocatable object (key=value strings), or None if it is not one."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:  # ELFCLASS64 only: DPUs are 64-bit
        return None
    endian = "<" if data[5] == 1 else ">"
    e_type = struct.unpack_from(endian + "H", data, 16)[0]
    if e_type != ET_REL:
        return None
    shoff = struct.unpack_from(endian + "Q", data, 40)[0]
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 58)
    if shoff == 0 or shentsize < 64 or shoff + shnum * shentsize > len(data) or shstrndx >= shnum:
        return None

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            endian + "IIQQQQ", data, shoff + index * shentsize
        )
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    names = data[str_off : str_off + str_size]
    for index in range(shnum):
        name, offset, size = section(index)
        if names[name : names.find(b"\0", name)] == b".modinfo":
            pairs = [p.decode(errors="replace") for p in data[offset : offset + size].split(b"\0") if b"=" in p]
            return dict(p.split("=", 1) for p in pairs)
    return None


def loaded(root: Path) -> dict[str, str]:
    """name -> its /proc/modules line."""
    path = root / "proc/modules"
    lines = path.read_text().splitlines() if path.exists() else []
    return {line.split()[0]: line for line in lines if line.strip()}


def insmod(root: Path, file: Path, params: list[str]) -> str | None:
    """None when loaded, else kmod's message."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        return f"insmod: ERROR: could not load module {file}: {exc.strerror}"
    info = modinfo(data)
    if info is None or not info.get("name"):
        return f"insmod: ERROR: could not insert module {file}: Invalid module format"
    bad = [p for p in params if not _PARAM.match(p)]
    if bad:
        return f"insmod: ERROR: could not insert module {file}: Invalid parameters ({' '.join(bad)})"
    name = info["name"]
    have = loaded(root)
    if name in have:
        return f"insmod: ERROR: could not insert module {file}: File exists"
    have[name] = f"{name} {len(data)} 0 - Live 0x0000000000000000"
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/modules").write_text("".join(line + "\n" for line in have.values()))
    where = root / "sys/module" / name / "parameters"
    where.mkdir(parents=True, exist_ok=True)
    for param in params:
        key, value = param.split("=", 1)
        (where / key).write_text(value + "\n")
    return None


def rmmod(root: Path, name: str) -> str | None:
    have = loaded(root)
    if name not in have:
        return f"rmmod: ERROR: Module {name} is not currently loaded"
    del have[name]
    (root / "proc/modules").write_text("".join(line + "\n" for line in have.values()))
    shutil.rmtree(root / "sys/module" / name, ignore_errors=True)
    return None


def boot(root: Path) -> None:
    """What a boot does to the loaded modules: none are left."""
    for name in loaded(root):
        shutil.rmtree(root / "sys/module" / name, ignore_errors=True)
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/modules").write_text("")


def emulated_kernel(root: Path) -> list[str]:
    """The command prefix the emulated DPU's agent runs in place of the module tools: add `insmod FILE ...`
    or `rmmod NAME`."""
    return [sys.executable, "-m", "dpufleet.sim.kernel", "--root", str(root)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpufleet-sim-kernel", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the emulated DPU's OS root")
    tools = parser.add_subparsers(dest="tool", required=True)
    load = tools.add_parser("insmod")
    load.add_argument("file", type=Path)
    load.add_argument("params", nargs="*")
    unload = tools.add_parser("rmmod")
    unload.add_argument("name")
    args = parser.parse_args(argv)
    said = insmod(args.root, args.file, args.params) if args.tool == "insmod" else rmmod(args.root, args.name)
    if said is not None:
        print(said, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
