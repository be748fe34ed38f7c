"""UpdateService (FirmwareInventory, SimpleUpdate) and TaskService."""

from __future__ import annotations

from typing import Any

from dpufleet.sim.bmc import MANAGER_ID, SYSTEM_ID, SimTask, TaskState
from dpufleet.sim.clock import utcnow_iso
from dpufleet.sim.messages import RedfishError
from dpufleet.sim.redfish.http import ROUTER, Ctx, Json, Reply, collection, reject_unknown, status_ok
from dpufleet.sim.redfish.schema import odata_type

_ACTION = "UpdateService.SimpleUpdate"


@ROUTER.add("GET", "/UpdateService")
def update_service(ctx: Ctx, _: dict[str, str]) -> Json:
    return {
        "@odata.id": ctx.uri("UpdateService"),
        "@odata.type": odata_type("UpdateService"),
        "Id": "UpdateService",
        "Name": "Update Service",
        "ServiceEnabled": True,
        "Status": status_ok(),
        "FirmwareInventory": ctx.link("UpdateService", "FirmwareInventory"),
        "Actions": {
            f"#{_ACTION}": {
                "target": ctx.uri("UpdateService", "Actions", _ACTION),
                "TransferProtocol@Redfish.AllowableValues": ["HTTP", "HTTPS"],
            }
        },
    }


@ROUTER.add("GET", "/UpdateService/FirmwareInventory")
def firmware_inventory(ctx: Ctx, _: dict[str, str]) -> Json:
    ids = [fw.id for fw in ctx.bmc.dpu.profile.firmware]
    return collection(
        ctx, "SoftwareInventoryCollection", "Firmware Inventory", ("UpdateService", "FirmwareInventory"), ids
    )


@ROUTER.add("GET", "/UpdateService/FirmwareInventory/{fw_id}")
def firmware_item(ctx: Ctx, params: dict[str, str]) -> Json:
    dpu = ctx.bmc.dpu
    spec = next((fw for fw in dpu.profile.firmware if fw.id == params["fw_id"]), None)
    if spec is None:
        raise RedfishError(404, "ResourceNotFound", "SoftwareInventory", params["fw_id"])
    related = ("Managers", MANAGER_ID) if spec.kind == "bmc" else ("Systems", SYSTEM_ID)
    return {
        "@odata.id": ctx.uri("UpdateService", "FirmwareInventory", spec.id),
        "@odata.type": odata_type("SoftwareInventory"),
        "Id": spec.id,
        "Name": spec.name,
        "Version": dpu.firmware[spec.id],
        "Updateable": spec.updateable,
        "Manufacturer": dpu.profile.vendor,
        "SoftwareId": spec.id,
        "Status": status_ok(),
        "RelatedItem": [ctx.link(*related)],
    }


def _target_id(ctx: Ctx, target: object) -> str:
    prefix = ctx.uri("UpdateService", "FirmwareInventory") + "/"
    if not isinstance(target, str) or not target.startswith(prefix):
        raise RedfishError(400, "ActionParameterValueFormatError", target, "Targets", _ACTION)
    return target[len(prefix) :].rstrip("/")


@ROUTER.add("POST", "/UpdateService/Actions/UpdateService.SimpleUpdate", privilege="ConfigureComponents")
def simple_update(ctx: Ctx, _: dict[str, str]) -> Reply:
    body = ctx.json_body()
    reject_unknown(body, {"ImageURI", "TransferProtocol", "Targets", "Username", "Password"}, action=_ACTION)
    image_uri = body.get("ImageURI")
    if image_uri is None:
        raise RedfishError(400, "ActionParameterMissing", _ACTION, "ImageURI")
    if not isinstance(image_uri, str):
        raise RedfishError(400, "ActionParameterValueFormatError", image_uri, "ImageURI", _ACTION)
    protocol = body.get("TransferProtocol")
    if protocol is not None and protocol not in ("HTTP", "HTTPS"):
        raise RedfishError(400, "ActionParameterValueNotInList", protocol, "TransferProtocol", _ACTION)
    raw_targets = body.get("Targets") or []
    if not isinstance(raw_targets, list):
        raise RedfishError(400, "ActionParameterValueFormatError", raw_targets, "Targets", _ACTION)
    targets = [_target_id(ctx, t) for t in raw_targets] or [ctx.bmc.default_update_target()]
    task = ctx.bmc.simple_update(image_uri, targets)
    location = ctx.uri("TaskService", "Tasks", task.id)
    return Reply(202, _task_body(ctx, task), headers={"Location": location})


@ROUTER.add("GET", "/TaskService")
def task_service(ctx: Ctx, _: dict[str, str]) -> Json:
    return {
        "@odata.id": ctx.uri("TaskService"),
        "@odata.type": odata_type("TaskService"),
        "Id": "TaskService",
        "Name": "Task Service",
        "ServiceEnabled": True,
        "CompletedTaskOverWritePolicy": "Oldest",
        "LifeCycleEventOnTaskStateChange": False,
        "DateTime": utcnow_iso(),
        "Status": status_ok(),
        "Tasks": ctx.link("TaskService", "Tasks"),
    }


@ROUTER.add("GET", "/TaskService/Tasks")
def tasks(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(ctx, "TaskCollection", "Tasks", ("TaskService", "Tasks"), list(ctx.bmc.tasks))


def _task_body(ctx: Ctx, task: SimTask) -> Json:
    messages: list[dict[str, Any]] = [{k: v for k, v in m.items() if not k.startswith("@")} for m in task.messages]
    body: Json = {
        "@odata.id": ctx.uri("TaskService", "Tasks", task.id),
        "@odata.type": odata_type("Task"),
        "Id": task.id,
        "Name": task.name,
        "TaskState": str(task.state),
        "TaskStatus": task.status,
        "StartTime": task.start_time,
        "PercentComplete": task.percent,
        "Messages": messages,
    }
    if task.end_time and task.state in (TaskState.COMPLETED, TaskState.EXCEPTION):
        body["EndTime"] = task.end_time
    return body


@ROUTER.add("GET", "/TaskService/Tasks/{task_id}")
def task(ctx: Ctx, params: dict[str, str]) -> Json:
    found = ctx.bmc.tasks.get(params["task_id"])
    if found is None:
        raise RedfishError(404, "ResourceNotFound", "Task", params["task_id"])
    return _task_body(ctx, found)
