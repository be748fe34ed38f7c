"""The vendor catalog: every DPU model the control plane knows, and how a card is matched to one.

A card says who it is in several ways, some more precise than others: its part number
(Redfish Chassis PartNumber, the PN of its PCI VPD) names one model; the Manufacturer and
Model its BMC reports name one too, but vary in spelling; the PCI vendor and device IDs
its host sees are shared by every board of a chip. :meth:`Catalog.lookup` tries them in
that order and says which one matched. A card that matches nothing is *unknown*, a normal
answer (``Match.model`` is None), never an exception: what to do with an unknown card is
the caller's decision.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from .files import DataFileError, invalid, read_mapping
from .schema import DpuModel, GenericModel

MODELS_DIR = Path(__file__).with_name("models")
GENERIC_FILE = Path(__file__).with_name("generic.yaml")

MatchedBy = Literal["part-number", "vendor-model", "pci-id", "firmware-inventory"]
# How many of a model's own firmware component ids (its BMC's excluded: every BMC has one) a
# firmware inventory must hold to name that model: one shared id is a coincidence, two are a card.
FIRMWARE_IDS_TO_MATCH = 2


@dataclass(frozen=True)
class Identity:
    """What a card reported about itself (any part may be missing)."""

    part_number: str | None = None
    vendor: str | None = None
    model: str | None = None
    pci: tuple[str, str] | None = None  # (vendor id, device id), hex, with or without 0x


@dataclass(frozen=True)
class Match:
    """The catalog's answer for one identity: a model and what matched it, or unknown."""

    identity: Identity
    model: DpuModel | None = None
    matched_by: MatchedBy | None = None

    @property
    def known(self) -> bool:
        return self.model is not None


def _specificity(pattern: str, part_number: str) -> tuple[int, int] | None:
    """How precisely ``pattern`` names ``part_number`` (an exact part number beats any pattern, a
    longer pattern a shorter one); None if it does not match."""
    if not fnmatch.fnmatchcase(part_number.casefold(), pattern.casefold()):
        return None
    wildcards = sum(pattern.count(c) for c in "*?")
    return (0 if wildcards else 1, len(pattern) - wildcards)


def _only(models: list[DpuModel]) -> DpuModel | None:
    """The one model, or None when there are none or several (several is no answer: which one?)."""
    return models[0] if len({m.name for m in models}) == 1 else None


def _hex(value: str) -> str:
    return value.strip().lower().removeprefix("0x")


@dataclass(frozen=True)
class Catalog:
    """DPU models by name, with the data file each came from."""

    models: Mapping[str, DpuModel]
    sources: Mapping[str, Path] = field(default_factory=dict)
    generic: GenericModel = field(default_factory=lambda: load_generic())  # for a DPU no model names

    def __iter__(self) -> Iterator[DpuModel]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def get(self, name: str) -> DpuModel | None:
        return self.models.get(name)

    def lookup(
        self,
        *,
        part_number: str | None = None,
        vendor: str | None = None,
        model: str | None = None,
        pci: tuple[str, str] | None = None,
    ) -> Match:
        """The model of a card: by part number, else by vendor and model, else by PCI IDs.

        Each step answers only when it names exactly one model; an ambiguous step (two
        models sharing a PCI ID, say) falls through to the next, and a card no step names
        is unknown.
        """
        identity = Identity(part_number=part_number, vendor=vendor, model=model, pci=pci)
        if part_number and part_number.strip():
            found = self._by_part_number(part_number.strip())
            if found is not None:
                return Match(identity, found, "part-number")
        if vendor and model:
            wanted = (vendor.strip().casefold(), model.strip().casefold())
            found = _only([m for m in self if (m.vendor.casefold(), m.model.casefold()) == wanted])
            if found is not None:
                return Match(identity, found, "vendor-model")
        if pci:
            ids = (_hex(pci[0]), _hex(pci[1]))
            found = _only([m for m in self if any((vid, did) == ids for vid, did, _role in m.pci_ids())])
            if found is not None:
                return Match(identity, found, "pci-id")
        return Match(identity)

    def with_firmware(self, ids: Iterable[str]) -> dict[str, int]:
        """Models whose own firmware components (BlueField's DPU_OS, DPU_NIC, ...; the BMC's excluded:
        every BMC has one) a FirmwareInventory holds, at least FIRMWARE_IDS_TO_MATCH of them: by
        name, how many. Evidence of a DPU even when several models of a family share the ids."""
        present = {i.strip().casefold() for i in ids}
        scores: dict[str, int] = {}
        for model in self:
            held = len({fw.id.casefold() for fw in model.firmware if fw.kind != "bmc"} & present)
            if held >= FIRMWARE_IDS_TO_MATCH:
                scores[model.name] = held
        return scores

    def lookup_firmware(self, ids: Iterable[str]) -> Match:
        """The one model whose firmware components a FirmwareInventory holds most of; unknown on a tie."""
        scores = self.with_firmware(ids)
        best = max(scores.values(), default=0)
        found = _only([m for m in self if best and scores.get(m.name) == best])
        return Match(Identity(), found, "firmware-inventory" if found else None)

    def _by_part_number(self, part_number: str) -> DpuModel | None:
        best: tuple[int, int] | None = None
        candidates: list[DpuModel] = []
        for model in self:
            scores = [s for p in model.part_numbers if (s := _specificity(p, part_number)) is not None]
            if not scores:
                continue
            score = max(scores)
            if best is None or score > best:
                best, candidates = score, [model]
            elif score == best:
                candidates.append(model)
        return _only(candidates)


def load_model(path: Path) -> DpuModel:
    """One model file; DataFileError names the file and every field at fault."""
    data = read_mapping(path)
    try:
        model = DpuModel.model_validate(data)
    except ValidationError as exc:
        raise invalid(path, exc) from None
    if model.name != path.stem:
        raise DataFileError(path, [f"name: {model.name!r} must match the file name ({path.stem!r})"])
    return model


def load_generic(path: Path = GENERIC_FILE) -> GenericModel:
    """The generic DPU's file; DataFileError names the file and every field at fault."""
    try:
        return GenericModel.model_validate(read_mapping(path))
    except ValidationError as exc:
        raise invalid(path, exc) from None


def load_catalog(directories: Iterable[Path] = ()) -> Catalog:
    """The built-in models plus any ``*.yaml`` in extra ``directories``.

    A later directory's model replaces an earlier one of the same name, so a site can
    correct a built-in model without editing the package. Two models that claim the same
    part number, or the same vendor and model, are refused: a card would match either.
    """
    models: dict[str, DpuModel] = {}
    sources: dict[str, Path] = {}
    for directory in (MODELS_DIR, *directories):
        for path in sorted(Path(directory).glob("*.yaml")):
            model = load_model(path)
            models[model.name] = model
            sources[model.name] = path
    _check_distinct(models, sources)
    return Catalog(models, sources, load_generic())


def _check_distinct(models: Mapping[str, DpuModel], sources: Mapping[str, Path]) -> None:
    claimed: dict[str, str] = {}
    for model in models.values():
        keys = [f"part_numbers: {p!r}" for p in model.part_numbers]
        keys.append(f"vendor {model.vendor!r} and model {model.model!r}")
        for key in keys:
            other = claimed.setdefault(key.casefold(), model.name)
            if other != model.name:
                raise DataFileError(sources[model.name], [f"{key} is also claimed by {sources[other]}"])


@lru_cache(maxsize=1)
def builtin_catalog() -> Catalog:
    """The packaged models, loaded once per process."""
    return load_catalog()
