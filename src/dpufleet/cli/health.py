"""`dpufleet health policy show` and `dpufleet debug-bundle DPU`: what remediation will do, and what a DPU shows.

The debug bundle is a .tar.gz for whoever debugs a DPU that won't boot: the BMC's log entries
(fetched by the server over Redfish: the BMC's credentials never reach the caller), boot
progress, the DPU and BMC objects (with the agent's last reports, conditions, diagnosis and
remediation history), its host, and its recent events.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import typer
import yaml

from ..api.kinds import DEFAULT_POLICY_NAME, default_spec
from ..client import Client, ClientError
from .common import note, options

health_app = typer.Typer(help="Health and remediation.", no_args_is_help=True)
policy_app = typer.Typer(help="Remediation policies.", no_args_is_help=True)
health_app.add_typer(policy_app, name="policy")
_PROJECT = typer.Option(None, "-p", "--project", help="project")


@policy_app.command("show")
def policy_show(
    ctx: typer.Context,
    project: str | None = _PROJECT,
    builtin: bool = typer.Option(False, "--built-in", help="only the built-in default"),
) -> None:
    """The RemediationPolicies of a project (first match by name wins), then the built-in default, as YAML."""
    docs: list[dict[str, Any]] = []
    if not builtin:
        config = options(ctx).config(project)
        with Client.from_config(config) as client:
            docs = sorted(client.list("remediationpolicies", config.project).items, key=lambda d: d["metadata"]["name"])
    for doc in docs:
        shown = {"kind": "RemediationPolicy", "metadata": {"name": doc["metadata"]["name"]}, "spec": doc["spec"]}
        print(yaml.safe_dump(shown, sort_keys=False).rstrip())
        print("---")
    built_in = {
        "kind": "RemediationPolicy",
        "metadata": {"name": DEFAULT_POLICY_NAME},
        "spec": default_spec().model_dump(mode="json", exclude_defaults=True),
    }
    print(f"# {DEFAULT_POLICY_NAME}: used for DPUs no policy selects, and for classes a policy does not list")
    print(yaml.safe_dump(built_in, sort_keys=False).rstrip())


def _add(tar: tarfile.TarFile, name: str, data: Any) -> None:
    raw = (data if isinstance(data, str) else json.dumps(data, indent=2, default=str)).encode()
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(raw))


def debug_bundle(
    ctx: typer.Context,
    dpu: str = typer.Argument(..., help="the DPU's name"),
    output: Path | None = typer.Option(None, "-o", "--output", help="the archive (default: <dpu>-debug.tar.gz)"),
    project: str | None = _PROJECT,
) -> None:
    """Gather what debugging a DPU needs into one archive."""
    config = options(ctx).config(project)
    target = output or Path(f"{dpu}-debug.tar.gz")
    with Client.from_config(config) as client:
        obj = client.get("dpu", dpu, config.project)
        status = obj.get("status") or {}
        parts: dict[str, Any] = {"dpu.json": obj}
        if status.get("bmc"):
            try:
                parts["bmc.json"] = client.get("bmc", status["bmc"], config.project)
            except ClientError as exc:
                parts["bmc.json"] = {"error": str(exc)}
            try:
                logs = client._request("GET", f"/health/v1/projects/{config.project}/dpus/{dpu}/bmc-logs")
            except ClientError as exc:
                logs = {"error": str(exc)}
            parts["bmc-logs.json"] = logs
        if status.get("host"):
            try:
                parts["host.json"] = client.get("host", status["host"], config.project)
            except ClientError as exc:
                parts["host.json"] = {"error": str(exc)}
        events = [
            e
            for e in client.list("events", config.project).items
            if e.get("involvedObject", {}).get("name") in (dpu, status.get("bmc"))
        ]
        parts["events.json"] = sorted(events, key=lambda e: e.get("lastTimestamp") or "")
        parts["summary.txt"] = "\n".join(
            [
                f"dpu: {dpu}",
                f"power: {status.get('powerState')}  boot progress: {status.get('bootProgress')}",
                f"diagnosis: {(status.get('diagnosis') or {}).get('reason')}: {(status.get('diagnosis') or {}).get('message')}",
                f"agent: {json.dumps(status.get('agent'))}",
                "conditions:",
                *(
                    f"  {c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message', '')}"
                    for c in status.get("conditions") or []
                ),
                "console log: not available (the emulated BMCs offer no serial console yet)",
            ]
        )
    with tarfile.open(target, "w:gz") as tar:
        for name, data in parts.items():
            _add(tar, f"{dpu}/{name}", data)
    note(f"wrote {target} ({', '.join(parts)})")
