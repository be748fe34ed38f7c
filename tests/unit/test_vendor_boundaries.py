"""The product does not depend on its emulator, the catalog stands on the API alone, and the
emulator's modules import one another in one direction only (grimp: what import-linter uses)."""

from __future__ import annotations

from functools import lru_cache

import grimp

# Besides sim/ itself, the modules that may run the emulated fleet.
MAY_IMPORT_SIM = ("dpufleet.sim", "dpufleet.cli.sim", "dpufleet.demo", "dpufleet.bench")


@lru_cache(maxsize=1)
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("dpufleet", include_external_packages=False)


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _imports(importer_in: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """(importer, imported, line) of every import, module-level or inside a function."""
    g = graph()
    found = []
    for importer in sorted(m for m in g.modules if _within(m, *importer_in)):
        for imported in g.find_modules_directly_imported_by(importer):
            details = g.get_import_details(importer=importer, imported=imported)
            found.append((importer, imported, details[0]["line_number"] if details else 0))
    return found


def test_no_product_module_imports_the_emulator():
    product = tuple(sorted({m.split(".")[1] for m in graph().modules if m.count(".") >= 1}))
    wrong = [
        f"{importer} (line {line}) imports {imported}"
        for importer, imported, line in _imports(tuple(f"dpufleet.{p}" for p in product))
        if _within(imported, "dpufleet.sim") and not _within(importer, *MAY_IMPORT_SIM)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_vendor_catalog_imports_nothing_of_dpufleet_but_the_api():
    wrong = [
        f"{importer} (line {line}) imports {imported}"
        for importer, imported, line in _imports(("dpufleet.vendors",))
        if not _within(imported, "dpufleet.vendors", "dpufleet.api")
    ]
    assert not wrong, "\n".join(wrong)


def test_the_emulator_has_no_import_cycle():
    g = graph()
    cycles = []
    for importer, imported, line in _imports(("dpufleet.sim",)):
        if _within(imported, "dpufleet.sim") and g.chain_exists(importer=imported, imported=importer):
            back = " -> ".join(g.find_shortest_chain(importer=imported, imported=importer) or ())
            cycles.append(f"{importer} (line {line}) imports {imported}, which leads back: {back}")
    assert not cycles, "\n".join(cycles)
