"""Redfish: the DMTF standard every DPU BMC speaks."""
