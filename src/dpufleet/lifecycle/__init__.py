"""Lifecycle: versions, update plans, rollouts."""
