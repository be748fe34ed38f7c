"""Provisioning: flavors checked against the hardware, and the per-DPU provisioning state machine."""
