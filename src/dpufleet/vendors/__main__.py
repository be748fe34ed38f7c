"""`python -m dpufleet.vendors [DIR ...]`: check catalog files and list the models they give.

The built-in models plus those of each DIR (a later one replaces a model of the same name),
as the control plane would load them. A bad file prints one line naming the file and every
field at fault, and the exit status is 1: check a new model here before shipping it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .catalog import MODELS_DIR, load_catalog
from .files import DataFileError


def main(argv: list[str]) -> int:
    missing = [d for d in argv if not Path(d).is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        catalog = load_catalog([Path(d) for d in argv])
    except DataFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [("NAME", "VENDOR", "FAMILY", "MODEL", "PART NUMBERS", "FILE")]
    for model in catalog:
        source = catalog.sources.get(model.name)
        shown = "(built-in)" if source is None or source.parent == MODELS_DIR else str(source)
        rows.append((model.name, model.vendor, model.family, model.model, ",".join(model.part_numbers), shown))
    generic = catalog.generic  # what a card no model names is adopted as
    rows.insert(1, (generic.name, "-", "-", f"({generic.description})", "-", "(built-in)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
