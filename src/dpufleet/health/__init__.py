"""Health: detect what is wrong with a DPU, say why, and remediate by policy.

`evidence` holds what the signals say (Redfish, the agent, the host agent, Redfish events),
`diagnosis` turns evidence into a failure class (docs/faults.md is the contract), `policy`
decides the next remediation action, `actions` carries it out, `controller` runs it per DPU.
"""
