"""Inventory: turning what BMCs, agents and host agents report into DPU status."""
