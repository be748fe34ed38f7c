"""What one DPU should run: the instances its DPUAllocation holds, each with its service's artifact and config.

The agent asks for this over the agent protocol (`GET /agent/v1/services`) and keeps the last answer on
the DPU, so that after a reboot it starts the same instances before the control plane is reachable.
An instance whose service is being deleted is left out (the runtime stops it).
"""

from __future__ import annotations

import hashlib
import json

from ..api.agent_services import DesiredInstance, DesiredServices
from ..api.errors import NotFound
from ..api.kinds import DPUServiceSpec
from ..store.store import Store


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def desired_instance(service: str, instance: str, spec: DPUServiceSpec) -> DesiredInstance:
    """One instance of a service as the runtime runs it, with the revisions that say when to restart it."""
    runs = {
        "artifact": spec.artifact.model_dump(mode="json"),
        "env": spec.config.env,
        "args": spec.config.args,
        "resources": spec.resources.model_dump(mode="json"),
        "privileged": spec.privileged,
        "probes": spec.probes.model_dump(mode="json"),
    }
    files = [f.model_dump(mode="json") for f in spec.config.files]
    return DesiredInstance(
        service=service,
        instance=instance,
        revision=_digest(runs),
        configRevision=_digest(files),
        artifact=spec.artifact,
        files=spec.config.files,
        env=spec.config.env,
        args=spec.config.args,
        resources=spec.resources,
        restartPolicy=spec.restartPolicy,
        privileged=spec.privileged,
        probes=spec.probes,
        after=sorted(d.service for d in spec.dependsOn if d.scope == "SameDPU"),
    )


def desired_services(store: Store, project: str, dpu: str) -> DesiredServices:
    try:
        allocation = store.get("DPUAllocation", dpu, project)
    except NotFound:
        return DesiredServices(dpu=dpu)
    instances: list[DesiredInstance] = []
    for placed in (allocation.get("spec") or {}).get("instances") or []:
        try:
            doc = store.get("DPUService", placed["service"], project)
        except NotFound:
            continue
        if (doc.get("metadata") or {}).get("deletionTimestamp"):
            continue
        spec = DPUServiceSpec.model_validate(doc["spec"])
        instances.append(desired_instance(placed["service"], placed["instance"], spec))
    return DesiredServices(dpu=dpu, instances=sorted(instances, key=lambda i: i.service))
