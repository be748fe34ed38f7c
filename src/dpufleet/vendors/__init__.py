"""The vendor catalog: the hardware facts of every DPU model the control plane knows.

One YAML file per model (``vendors/models/``), validated against :mod:`.schema` as it
loads, and looked up by what a card reports about itself (:meth:`Catalog.lookup`). The
product reads hardware facts here and nowhere else; the emulator (``sim/``)
builds its emulated cards on these same facts. This package depends on nothing of
dpufleet but ``dpufleet.api``.
"""

from .catalog import (
    GENERIC_FILE,
    MODELS_DIR,
    Catalog,
    Identity,
    Match,
    MatchedBy,
    builtin_catalog,
    load_catalog,
    load_generic,
    load_model,
)
from .files import DataFileError
from .schema import (
    INSTALL_PATHS,
    AcceleratorSpec,
    CpuSpec,
    DpuModel,
    FirmwareComponent,
    FirmwareParameterSpec,
    GenericModel,
    HostPciSpec,
    InstallPath,
    MemorySpec,
    PciIdSpec,
    PortSpec,
    StorageSpec,
    VirtualFunctionSpec,
)

__all__ = [
    "GENERIC_FILE",
    "INSTALL_PATHS",
    "MODELS_DIR",
    "AcceleratorSpec",
    "Catalog",
    "CpuSpec",
    "DataFileError",
    "DpuModel",
    "FirmwareComponent",
    "FirmwareParameterSpec",
    "GenericModel",
    "HostPciSpec",
    "Identity",
    "InstallPath",
    "Match",
    "MatchedBy",
    "MemorySpec",
    "PciIdSpec",
    "PortSpec",
    "StorageSpec",
    "VirtualFunctionSpec",
    "builtin_catalog",
    "load_catalog",
    "load_generic",
    "load_model",
]
