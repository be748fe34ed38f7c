"""A host BMC's hardware report: strings trimmed, zeros (a disabled summary) taken as unknown, not as facts."""

from __future__ import annotations

from dpufleet.drivers.redfish.hostbmc import HostHardware, hardware_of


def test_padded_strings_are_trimmed_and_zeros_are_unknown() -> None:
    system = {
        "SerialNumber": "  SRV-0042   ",
        "ProcessorSummary": {"Model": " Intel Xeon Gold 6338 ", "Count": 0},
        "MemorySummary": {"TotalSystemMemoryGiB": 0},
    }
    assert hardware_of(system) == HostHardware("SRV-0042", "Intel Xeon Gold 6338", None, None)


def test_reported_figures_are_kept() -> None:
    system = {"ProcessorSummary": {"Count": 2}, "MemorySummary": {"TotalSystemMemoryGiB": 512}}
    assert hardware_of(system) == HostHardware(None, None, 2, 512.0)


def test_missing_or_blank_fields_are_unknown() -> None:
    assert hardware_of({"SerialNumber": "   ", "ProcessorSummary": {"Count": "n/a"}}) == HostHardware(
        None, None, None, None
    )
