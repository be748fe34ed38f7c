"""Telemetry on the DPU: plugins collect samples by class, the spool keeps them while the bus is away, and
the publisher forwards them in order (base.py, os_plugin.py, spool.py, publisher.py)."""
