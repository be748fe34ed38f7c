"""Which DMTF schema versions the emulated BMC implements, and $metadata.

The CSDL files themselves are DMTF's (release 2025.4), kept outside the
package in ``shared/redfish/csdl`` next to the project; :func:`csdl_directory`
finds them at runtime so tests and tools (the DMTF validator) can check every
``@odata.type`` the emulator emits against the real schemas.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import quoteattr

# Versioned namespace of every resource type served.
SCHEMA_VERSIONS: dict[str, str] = {
    "ServiceRoot": "v1_20_0",
    "ComputerSystem": "v1_27_0",
    "Manager": "v1_24_0",
    "Chassis": "v1_28_0",
    "UpdateService": "v1_17_0",
    "SoftwareInventory": "v1_13_0",
    "TaskService": "v1_3_0",
    "Task": "v1_7_4",
    "LogService": "v1_9_0",
    "LogEntry": "v1_21_0",
    "AccountService": "v1_18_1",
    "ManagerAccount": "v1_14_1",
    "Role": "v1_3_3",
    "SessionService": "v1_2_0",
    "Session": "v1_8_0",
    "Processor": "v1_22_0",
    "Memory": "v1_23_0",
    "SecureBoot": "v1_1_2",
    "Sensor": "v1_12_0",
    "EthernetInterface": "v1_12_4",
    "Message": "v1_2_1",
    "VirtualMedia": "v1_6_5",
    "EventService": "v1_12_0",
    "EventDestination": "v1_16_0",
    "Event": "v1_13_0",
    "TelemetryService": "v1_4_1",
    "MetricReport": "v1_5_2",
}

COLLECTIONS: tuple[str, ...] = (
    "ComputerSystemCollection",
    "ManagerCollection",
    "ChassisCollection",
    "SoftwareInventoryCollection",
    "TaskCollection",
    "LogServiceCollection",
    "LogEntryCollection",
    "ManagerAccountCollection",
    "RoleCollection",
    "SessionCollection",
    "ProcessorCollection",
    "MemoryCollection",
    "SensorCollection",
    "EthernetInterfaceCollection",
    "VirtualMediaCollection",
    "MetricReportCollection",
    "EventDestinationCollection",
)

# Schemas referenced without a resource of their own.
_SUPPORT_SCHEMAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("RedfishExtensions_v1.xml", ("RedfishExtensions.v1_0_0",)),
    ("Resource_v1.xml", ("Resource", "Resource.v1_0_0")),
)


def odata_type(kind: str) -> str:
    return f"#{kind}.{SCHEMA_VERSIONS[kind]}.{kind}"


def collection_type(kind: str) -> str:
    assert kind in COLLECTIONS, kind
    return f"#{kind}.{kind}"


def csdl_directory() -> Path | None:
    """The DMTF CSDL directory: $DPUFLEET_REDFISH_CSDL, else shared/redfish/csdl beside the project."""
    override = os.environ.get("DPUFLEET_REDFISH_CSDL")
    if override:
        return Path(override) if Path(override).is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "redfish" / "csdl"
        if candidate.is_dir():
            return candidate
    return None


def _references() -> list[tuple[str, list[str]]]:
    refs: list[tuple[str, list[str]]] = [(f, list(ns)) for f, ns in _SUPPORT_SCHEMAS]
    for kind, version in SCHEMA_VERSIONS.items():
        refs.append((f"{kind}_v1.xml", [kind, f"{kind}.{version}"]))
    refs.extend((f"{kind}_v1.xml", [kind]) for kind in COLLECTIONS)
    return refs


@lru_cache(maxsize=1)
def metadata_xml() -> str:
    """The service's OData $metadata document (CSDL), referencing DMTF's schemas."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">',
    ]
    for filename, namespaces in _references():
        uri = quoteattr(f"http://redfish.dmtf.org/schemas/v1/{filename}")
        lines.append(f"  <edmx:Reference Uri={uri}>")
        for namespace in namespaces:
            alias = ' Alias="Redfish"' if namespace.startswith("RedfishExtensions") else ""
            lines.append(f'    <edmx:Include Namespace="{namespace}"{alias}/>')
        lines.append("  </edmx:Reference>")
    lines += [
        "  <edmx:DataServices>",
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">',
        f'      <EntityContainer Name="Service" Extends="ServiceRoot.{SCHEMA_VERSIONS["ServiceRoot"]}'
        '.ServiceContainer"/>',
        "    </Schema>",
        "  </edmx:DataServices>",
        "</edmx:Edmx>",
    ]
    return "\n".join(lines) + "\n"


def missing_namespaces(directory: Path) -> list[str]:
    """Namespaces :func:`metadata_xml` references that the CSDL files lack (expected: none)."""
    missing: list[str] = []
    for filename, namespaces in _references():
        path = directory / filename
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        missing.extend(f"{filename}:{namespace}" for namespace in namespaces if f'Namespace="{namespace}"' not in text)
    return missing
