"""Health routes: the BMC's log of one DPU, fetched through the server for `dpufleet debug-bundle`.

    GET /health/v1/projects/{project}/dpus/{name}/bmc-logs   admin/operator (console-access)

The server asks the DPU's BMC over Redfish with the stored credentials; the caller gets the
entries, never the credentials. The module also registers the health metrics (alerts,
quarantines) with the server's Prometheus registry.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..api.errors import NotFound
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..health import actions
from ..health.probe import bmc_credentials, discover_links
from ..security.policy import SubAction
from .access import Access


def health_router(state: Any, dependencies: list[Any]) -> APIRouter:
    from .app import _doc

    actions.register_metrics(state.registry)
    router = APIRouter(dependencies=dependencies, tags=["health"])

    @router.get("/health/v1/projects/{project}/dpus/{name}/bmc-logs", summary="The DPU's BMC log entries (Redfish)")
    async def bmc_logs(project: str, name: str, request: Request) -> Response:
        acc: Access = request.state.access
        acc.require(SubAction.CONSOLE_ACCESS, project)
        dpu = await state.read(state.store.get, "DPU", name, project)
        bmc_name = (dpu.get("status") or {}).get("bmc")
        if not bmc_name:
            raise NotFound(f"dpu {name!r} is not managed through a BMC")
        bmc = await state.read(state.store.get, "BMC", bmc_name, project)
        creds = await bmc_credentials(state.store, bmc)
        spec = bmc["spec"]
        result: dict[str, Any] = {"bmc": bmc_name, "logs": {}, "system": None, "error": None}
        async with RedfishClient(spec["address"], creds, verify=spec.get("verifyTLS", True), retries=1) as client:
            try:
                links = await discover_links(client, (dpu.get("status") or {}).get("serialNumber"))
                system = await client.get(links.system)
                result["system"] = {
                    k: system.get(k) for k in ("PowerState", "BootProgress", "Status", "SerialNumber", "Model")
                }
                for entries in links.entries:
                    body = await client.get(entries)
                    result["logs"][entries] = body.get("Members") or []
            except RedfishError as exc:
                result["error"] = str(exc)
        await state.write(acc.record, "health-bmc-logs", "DPU", name, project)
        return _doc(result)

    _ = bmc_logs
    return router
