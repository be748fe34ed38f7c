"""Redfish resources of an emulated DPU BMC, served over real HTTP."""
