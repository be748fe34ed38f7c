"""The user guide's supported-hardware table is the catalog's: one row per model file, as
`rows()` renders it, so a model added to (or changed in) the catalog fails this until the
guide says so too. Print the rows to paste with `python tests/docs/test_supported_hardware.py`."""

from __future__ import annotations

from pathlib import Path

from dpufleet.vendors import builtin_catalog

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "inventory.md"
HEADER = "| Catalog name | Vendor | Family | Model (as the BMC reports it) | Part numbers | PCI IDs (vendor:device role) | Install paths |"


def rows() -> list[str]:
    catalog = builtin_catalog()
    found = [
        f"| `{m.name}` | {m.vendor} | {m.family} | {m.model} | {', '.join(f'`{p}`' for p in m.part_numbers)} | "
        f"{', '.join(f'`{v}:{d}` {r}' for v, d, r in m.pci_ids())} | {', '.join(m.install_paths)} |"
        for m in sorted(catalog, key=lambda m: m.name)
    ]
    generic = catalog.generic
    found.append(
        f"| `{generic.name}` | any | any | {generic.description} | — | — | {', '.join(generic.install_paths)} |"
    )
    return found


def test_the_guide_lists_every_catalog_model_as_the_catalog_has_it() -> None:
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    assert HEADER in lines, f"{GUIDE}: no supported-hardware table"
    start = lines.index(HEADER) + 2  # after the header and its |---| line
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert table == rows()


if __name__ == "__main__":
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    print("\n".join(rows()))
