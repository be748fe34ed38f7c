"""Service root, OData documents, SessionService and AccountService."""

from __future__ import annotations

from dpufleet.sim.bmc import ROLES, SimAccount, SimBMC
from dpufleet.sim.messages import RedfishError
from dpufleet.sim.redfish.http import ROUTER, Ctx, Json, Reply, collection, reject_unknown, status_ok
from dpufleet.sim.redfish.schema import metadata_xml, odata_type

REDFISH_VERSION = "1.20.0"
# ServiceRoot property names that differ from the resource's path segment.
_ROOT_PROPERTY = {"TaskService": "Tasks"}
_TOP_LEVEL = (
    "Systems",
    "Managers",
    "Chassis",
    "UpdateService",
    "TaskService",
    "AccountService",
    "SessionService",
    "EventService",
    "TelemetryService",
)


def offers_expand(bmc: SimBMC) -> bool:
    """A standard-style BMC expands a collection's members in place ($expand=. one level, DSP0266 7.3);
    one in the BF-23.10 style, as that era's bmcweb builds with its query parameters off, does not."""
    return bmc.dpu.profile.redfish_style == "standard"


@ROUTER.add("GET", "", privilege="NoAuth")
def service_root(ctx: Ctx, _: dict[str, str]) -> Json:
    bmc = ctx.bmc
    body: Json = {
        "@odata.id": ctx.uri(),
        "@odata.type": odata_type("ServiceRoot"),
        "Id": "RootService",
        "Name": "Root Service",
        "RedfishVersion": REDFISH_VERSION,
        "UUID": bmc.uuid,
        "Vendor": bmc.dpu.profile.vendor,
        "Product": bmc.dpu.profile.bmc.model,
        "Links": {"Sessions": ctx.link("SessionService", "Sessions")},
    }
    if offers_expand(bmc):
        body["ProtocolFeaturesSupported"] = {
            "ExpandQuery": {"ExpandAll": False, "Levels": True, "MaxLevels": 1, "Links": False, "NoLinks": True},
            "FilterQuery": False, "SelectQuery": False, "OnlyMemberQuery": False, "ExcerptQuery": False,
        }  # fmt: skip
    for name in _TOP_LEVEL:
        body[_ROOT_PROPERTY.get(name, name)] = ctx.link(name)
    return body


@ROUTER.add("GET", "/$metadata", privilege="NoAuth")
def metadata(ctx: Ctx, _: dict[str, str]) -> Reply:
    return Reply(body=metadata_xml(), media_type="application/xml")


@ROUTER.add("GET", "/odata", privilege="NoAuth")
def odata_service_document(ctx: Ctx, _: dict[str, str]) -> Json:
    value = [{"name": "Service", "kind": "Singleton", "url": ctx.uri() + "/"}]
    value += [{"name": name, "kind": "Singleton", "url": ctx.uri(name)} for name in _TOP_LEVEL]
    return {"@odata.context": ctx.uri("$metadata"), "value": value}


# -- SessionService -------------------------------------------------------------


@ROUTER.add("GET", "/SessionService")
def session_service(ctx: Ctx, _: dict[str, str]) -> Json:
    return {
        "@odata.id": ctx.uri("SessionService"),
        "@odata.type": odata_type("SessionService"),
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": True,
        "SessionTimeout": ctx.bmc.limits.session_timeout_seconds,
        "Status": status_ok(),
        "Sessions": ctx.link("SessionService", "Sessions"),
    }


@ROUTER.add("GET", "/SessionService/Sessions")
def sessions(ctx: Ctx, _: dict[str, str]) -> Json:
    ctx.bmc.expire_sessions()
    members = [s.id for s in ctx.bmc.sessions.values()]
    return collection(ctx, "SessionCollection", "Sessions", ("SessionService", "Sessions"), members)


def _session_body(ctx: Ctx, session_id: str) -> Json:
    session = ctx.bmc.sessions.get(session_id)
    if session is None:
        raise RedfishError(404, "ResourceNotFound", "Session", session_id)
    return {
        "@odata.id": ctx.uri("SessionService", "Sessions", session.id),
        "@odata.type": odata_type("Session"),
        "Id": session.id,
        "Name": f"Session {session.id}",
        "UserName": session.username,
        "Password": None,
        "SessionType": "Redfish",
        "CreatedTime": session.created,
    }


@ROUTER.add("GET", "/SessionService/Sessions/{session_id}")
def session(ctx: Ctx, params: dict[str, str]) -> Json:
    return _session_body(ctx, params["session_id"])


@ROUTER.add("POST", "/SessionService/Sessions", privilege="NoAuth")
def login(ctx: Ctx, _: dict[str, str]) -> Reply:
    body = ctx.json_body()
    for required in ("UserName", "Password"):
        if not isinstance(body.get(required), str):
            raise RedfishError(400, "CreateFailedMissingReqProperties", required)
    account = ctx.bmc.authenticate(body["UserName"], body["Password"])
    if account is None:
        raise RedfishError(401, "NoValidSession")
    new = ctx.bmc.open_session(account)
    location = ctx.uri("SessionService", "Sessions", new.id)
    return Reply(201, _session_body(ctx, new.id), headers={"X-Auth-Token": new.token, "Location": location})


@ROUTER.add("DELETE", "/SessionService/Sessions/{session_id}", privilege="ConfigureSelf")
def logout(ctx: Ctx, params: dict[str, str]) -> Reply:
    session_id = params["session_id"]
    target = ctx.bmc.sessions.get(session_id)
    if target is None:
        raise RedfishError(404, "ResourceNotFound", "Session", session_id)
    own = ctx.account is not None and ctx.account.username == target.username
    if not own and (ctx.account is None or "ConfigureUsers" not in ROLES[ctx.account.role]):
        raise RedfishError(403, "InsufficientPrivilege")
    del ctx.bmc.sessions[session_id]
    return Reply(204)


# -- AccountService -------------------------------------------------------------


@ROUTER.add("GET", "/AccountService")
def account_service(ctx: Ctx, _: dict[str, str]) -> Json:
    return {
        "@odata.id": ctx.uri("AccountService"),
        "@odata.type": odata_type("AccountService"),
        "Id": "AccountService",
        "Name": "Account Service",
        "ServiceEnabled": True,
        "Status": status_ok(),
        "MinPasswordLength": 8,
        "MaxPasswordLength": 64,
        "LocalAccountAuth": "Enabled",
        "Accounts": ctx.link("AccountService", "Accounts"),
        "Roles": ctx.link("AccountService", "Roles"),
    }


@ROUTER.add("GET", "/AccountService/Accounts")
def accounts(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(
        ctx, "ManagerAccountCollection", "Accounts", ("AccountService", "Accounts"), list(ctx.bmc.accounts)
    )


def _account(ctx: Ctx, account_id: str) -> SimAccount:
    account = ctx.bmc.accounts.get(account_id)
    if account is None:
        raise RedfishError(404, "ResourceNotFound", "ManagerAccount", account_id)
    return account


def _account_body(ctx: Ctx, account: SimAccount) -> Json:
    return {
        "@odata.id": ctx.uri("AccountService", "Accounts", account.id),
        "@odata.type": odata_type("ManagerAccount"),
        "Id": account.id,
        "Name": "User Account",
        "UserName": account.username,
        "Password": None,
        "RoleId": account.role,
        "Enabled": account.enabled,
        "Locked": False,
        "AccountTypes": ["Redfish"],
        "Links": {"Role": ctx.link("AccountService", "Roles", account.role)},
    }


@ROUTER.add("GET", "/AccountService/Accounts/{account_id}")
def account(ctx: Ctx, params: dict[str, str]) -> Json:
    return _account_body(ctx, _account(ctx, params["account_id"]))


def _check_password(password: object) -> str:
    if not isinstance(password, str) or not 8 <= len(password) <= 64:
        raise RedfishError(400, "PropertyValueTypeError", "<hidden>", "Password")
    return password


def _check_role(role: object) -> str:
    if not isinstance(role, str) or role not in ROLES:
        raise RedfishError(400, "PropertyValueNotInList", role, "RoleId")
    return role


@ROUTER.add("POST", "/AccountService/Accounts", privilege="ConfigureUsers")
def create_account(ctx: Ctx, _: dict[str, str]) -> Reply:
    body = ctx.json_body()
    reject_unknown(body, {"UserName", "Password", "RoleId", "Enabled", "AccountTypes"})
    for required in ("UserName", "Password", "RoleId"):
        if required not in body:
            raise RedfishError(400, "CreateFailedMissingReqProperties", required)
    username = body["UserName"]
    if not isinstance(username, str) or not username:
        raise RedfishError(400, "PropertyValueTypeError", username, "UserName")
    if ctx.bmc.account_by_name(username) is not None:
        raise RedfishError(409, "ResourceAlreadyExists", "ManagerAccount", "UserName", username)
    account_id = str(max((int(i) for i in ctx.bmc.accounts), default=0) + 1)
    new = SimAccount(
        id=account_id,
        username=username,
        password=_check_password(body["Password"]),
        role=_check_role(body["RoleId"]),
        enabled=bool(body.get("Enabled", True)),
    )
    ctx.bmc.accounts[account_id] = new
    location = ctx.uri("AccountService", "Accounts", account_id)
    return Reply(201, _account_body(ctx, new), headers={"Location": location})


@ROUTER.add("PATCH", "/AccountService/Accounts/{account_id}", privilege="ConfigureSelf")
def update_account(ctx: Ctx, params: dict[str, str]) -> Json:
    target = _account(ctx, params["account_id"])
    body = ctx.json_body()
    reject_unknown(body, {"Password", "RoleId", "Enabled", "UserName"})
    is_admin = ctx.account is not None and "ConfigureUsers" in ROLES[ctx.account.role]
    own = ctx.account is not None and ctx.account.id == target.id
    if not is_admin and (not own or set(body) - {"Password"}):
        raise RedfishError(403, "InsufficientPrivilege")
    if "Password" in body:
        target.password = _check_password(body["Password"])
    if "RoleId" in body:
        target.role = _check_role(body["RoleId"])
    if "Enabled" in body:
        target.enabled = bool(body["Enabled"])
    if "UserName" in body:
        target.username = str(body["UserName"])
    return _account_body(ctx, target)


@ROUTER.add("DELETE", "/AccountService/Accounts/{account_id}", privilege="ConfigureUsers")
def delete_account(ctx: Ctx, params: dict[str, str]) -> Reply:
    target = _account(ctx, params["account_id"])
    admins = [a for a in ctx.bmc.accounts.values() if a.role == "Administrator" and a.enabled]
    if admins == [target]:
        raise RedfishError(409, "ResourceCannotBeDeleted")
    del ctx.bmc.accounts[target.id]
    for session_id in [s.id for s in ctx.bmc.sessions.values() if s.username == target.username]:
        del ctx.bmc.sessions[session_id]
    return Reply(204)


@ROUTER.add("GET", "/AccountService/Roles")
def roles(ctx: Ctx, _: dict[str, str]) -> Json:
    return collection(ctx, "RoleCollection", "Roles", ("AccountService", "Roles"), list(ROLES))


@ROUTER.add("GET", "/AccountService/Roles/{role_id}")
def role(ctx: Ctx, params: dict[str, str]) -> Json:
    role_id = params["role_id"]
    if role_id not in ROLES:
        raise RedfishError(404, "ResourceNotFound", "Role", role_id)
    return {
        "@odata.id": ctx.uri("AccountService", "Roles", role_id),
        "@odata.type": odata_type("Role"),
        "Id": role_id,
        "Name": f"{role_id} role",
        "RoleId": role_id,
        "IsPredefined": True,
        "AssignedPrivileges": list(ROLES[role_id]),
    }
