"""Commands that run code of the control plane, the emulator or the benches on this machine
(the `dpufleet` command's local half; cli/ is its HTTP half)."""
