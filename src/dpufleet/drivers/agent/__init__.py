"""Drivers that work through the dpufleet agent running on the DPU (in-band)."""
