"""The one policy table: which roles may take which action.

An action is either a kind and a verb (`dpus:patch`) or a sensitive sub-action
(`image-flash`) that the server detects from what a write changes. A write is
allowed when the caller's roles allow its verb AND every sub-action it carries.

Roles are granted system-wide or per project. On an object the caller holds:
- its system-wide roles;
- its roles in the object's owner project (metadata.project);
- its roles in the object's lessee project (spec.lessee), capped at `tenant`
  (a viewer stays a viewer): a lessee uses what it leases, it never administers it.

The rule for tenants (from the accelerator-management thread): a tenant uses what its
project owns or leases, but never reprograms firmware, OS or FPGA, never changes BMC
credentials and never flashes images. `docs/security-policy.md` is generated from
this table (`dpufleet policy --markdown`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..api.kinds import REGISTRY


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    TENANT = "tenant"
    VIEWER = "viewer"
    AGENT = "agent"
    CLOUD_SERVICE = "cloud-service"


class Verb(StrEnum):
    GET = "get"
    LIST = "list"
    WATCH = "watch"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    STATUS_UPDATE = "status-update"


class SubAction(StrEnum):
    FIRMWARE_UPDATE = "firmware-update"
    IMAGE_FLASH = "image-flash"
    FPGA_PROGRAM = "fpga-program"
    BMC_CREDENTIAL_CHANGE = "bmc-credential-change"
    CONSOLE_ACCESS = "console-access"
    POWER_ACTION = "power-action"
    LEASE_CHANGE = "lease-change"
    INVENTORY_CHANGE = "inventory-change"
    TOKEN_ADMIN = "token-admin"
    ROLE_ADMIN = "role-admin"
    AUDIT_READ = "audit-read"
    METRICS_READ = "metrics-read"
    AGENT_REPORT = "agent-report"
    ENROLLMENT_ADMIN = "enrollment-admin"
    PRIVILEGED_SERVICE = "privileged-service"


SUBACTION_DOC: dict[SubAction, str] = {
    SubAction.FIRMWARE_UPDATE: "writing a DPUFlavor's firmwareParameters (applied to NIC/BMC firmware settings)",
    SubAction.IMAGE_FLASH: "setting or changing a DPU's spec.image or spec.flavor, or a DPUSet's template "
    "image/flavor (reinstalls the DPU's OS and configuration); setting or clearing a DPU's "
    "dpufleet.io/allow-downgrade annotation (lets it install an older signed image); any write to an "
    "UpdateRequest (hosts and agents file theirs over the agent listener, for their own DPUs only)",
    SubAction.FPGA_PROGRAM: "programming a bitstream outside an image (the route arrives with the FPGA "
    "driver); an Image's fpga-bitstream component reaches a DPU through spec.image, which is image-flash",
    SubAction.BMC_CREDENTIAL_CHANGE: "any write to a Credential; changing a BMC's spec.address, "
    "spec.credentialsRef or spec.verifyTLS; changing a Discovery's spec.credentialsRef; changing a Host's "
    "spec.powerURL or spec.powerCredentialsRef (where the host power token is sent)",
    SubAction.CONSOLE_ACCESS: "opening a DPU or BMC console (route arrives with the console driver)",
    SubAction.POWER_ACTION: "any write to a PowerAction (a controlled reset of a DPU, a host, or both); "
    "it runs only if the PowerAction's project owns or leases its target (and, for host modes, the host)",
    SubAction.LEASE_CHANGE: "setting or changing spec.lessee of a DPU or Host",
    SubAction.INVENTORY_CHANGE: "changing a DPU's spec.bmcRef, spec.hostRef or spec.serialNumber, or a "
    "Host's spec.bmcRef (who the hardware is)",
    SubAction.TOKEN_ADMIN: "creating, listing or revoking API tokens",
    SubAction.ROLE_ADMIN: "granting a role (in a new token); checked for each grant's scope",
    SubAction.AUDIT_READ: "reading and verifying the audit log",
    SubAction.METRICS_READ: "reading /metrics",
    SubAction.AGENT_REPORT: "POST /agent/v1/report on the API port with a bearer token (break-glass only: "
    "agents report over mTLS on the agent listener, where a certificate can speak only for its own device)",
    SubAction.ENROLLMENT_ADMIN: "issuing enrollment tokens, trusting vendor CAs for IDevID enrollment, "
    "revoking a device's certificates (/enroll/v1/*)",
    SubAction.PRIVILEGED_SERVICE: "deploying a kernel module or a privileged DPUService (spec.artifact.kernelModule, "
    "spec.privileged), directly or in a DPUDeployment's services: a tenant may run services on a DPU it uses, "
    "never reprogram it",
}

READ = (Verb.GET, Verb.LIST, Verb.WATCH)
WRITE = (Verb.CREATE, Verb.UPDATE, Verb.PATCH, Verb.DELETE)
ALL_VERBS = tuple(Verb)
A, OP, T, V, G, C = Role.ADMIN, Role.OPERATOR, Role.TENANT, Role.VIEWER, Role.AGENT, Role.CLOUD_SERVICE

# Kinds a tenant or the cloud integration uses (they see them, and may change harmless fields of them).
_USED = (
    "DPU",
    "Host",
    "DPUSet",
    "Image",
    "DPUFlavor",
    "Event",
    "Project",
    "PowerAction",
    "DPUService",
    "DPUDeployment",
)


# Kinds only admins write: projects (who owns what) and publishers (whose signed images are trusted).
ADMIN_WRITTEN = ("Project", "Publisher")


def _kind_rules() -> dict[str, dict[Verb, frozenset[Role]]]:
    rules: dict[str, dict[Verb, frozenset[Role]]] = {}
    for kind in REGISTRY:
        per: dict[Verb, set[Role]] = {verb: {A} for verb in ALL_VERBS}
        for verb in READ:
            per[verb] |= {OP, V}
            if kind in _USED:
                per[verb] |= {T, C}
        for verb in (*WRITE, Verb.STATUS_UPDATE):
            if kind not in ADMIN_WRITTEN:
                per[verb].add(OP)
        if kind in ("DPU", "Host"):
            for verb in (Verb.UPDATE, Verb.PATCH):
                per[verb] |= {T, C}
        if kind in ("DPUSet", "DPUService", "DPUDeployment"):  # a bundle of the two
            for verb in WRITE:
                per[verb].add(T)
        if kind == "PowerAction":  # a reset is asked for (create) and cleaned up (delete), never edited
            for verb in (Verb.CREATE, Verb.DELETE):
                per[verb] |= {T, C}
        if kind == "DPU":
            per[Verb.GET].add(G)
            per[Verb.STATUS_UPDATE].add(G)
        if kind == "Event":
            per[Verb.CREATE] |= {G}
            per[Verb.UPDATE] |= {G}
            per[Verb.PATCH] |= {G}
        rules[kind] = {verb: frozenset(roles) for verb, roles in per.items()}
    return rules


KIND_RULES: dict[str, dict[Verb, frozenset[Role]]] = _kind_rules()

SUBACTION_RULES: dict[SubAction, frozenset[Role]] = {
    SubAction.FIRMWARE_UPDATE: frozenset({A, OP}),
    SubAction.IMAGE_FLASH: frozenset({A, OP}),
    SubAction.FPGA_PROGRAM: frozenset({A, OP}),
    SubAction.BMC_CREDENTIAL_CHANGE: frozenset({A, OP}),
    SubAction.CONSOLE_ACCESS: frozenset({A, OP}),
    SubAction.POWER_ACTION: frozenset({A, OP, T, C}),
    SubAction.LEASE_CHANGE: frozenset({A, OP, C}),
    SubAction.INVENTORY_CHANGE: frozenset({A, OP}),
    SubAction.TOKEN_ADMIN: frozenset({A}),
    SubAction.ROLE_ADMIN: frozenset({A}),
    SubAction.AUDIT_READ: frozenset({A, OP}),
    SubAction.METRICS_READ: frozenset({A, OP, V}),
    SubAction.AGENT_REPORT: frozenset({A}),
    SubAction.ENROLLMENT_ADMIN: frozenset({A, OP}),
    SubAction.PRIVILEGED_SERVICE: frozenset({A}),
}

# The tenant rule, stated once and checked by the tests against the table above.
TENANT_NEVER: frozenset[SubAction] = frozenset(
    {
        SubAction.FIRMWARE_UPDATE,
        SubAction.IMAGE_FLASH,
        SubAction.FPGA_PROGRAM,
        SubAction.BMC_CREDENTIAL_CHANGE,
        SubAction.CONSOLE_ACCESS,
        SubAction.PRIVILEGED_SERVICE,
    }
)
assert not any(Role.TENANT in SUBACTION_RULES[s] for s in TENANT_NEVER), "the tenant rule is broken"


def allowed_roles(kind: str, verb: Verb) -> frozenset[Role]:
    return KIND_RULES.get(kind, {}).get(verb, frozenset({Role.ADMIN}))


def action_name(kind: str, verb: Verb) -> str:
    info = REGISTRY.get(kind)
    return f"{info.plural if info else kind.lower()}:{verb.value}"


# --- sensitive sub-actions, detected from what a write changes --------------------------------------------


@dataclass(frozen=True)
class FieldRule:
    path: tuple[str, ...]
    action: SubAction


SENSITIVE_FIELDS: dict[str, tuple[FieldRule, ...]] = {
    "DPU": (
        FieldRule(("spec", "image"), SubAction.IMAGE_FLASH),
        FieldRule(("spec", "flavor"), SubAction.IMAGE_FLASH),
        FieldRule(("spec", "lessee"), SubAction.LEASE_CHANGE),
        FieldRule(("spec", "bmcRef"), SubAction.INVENTORY_CHANGE),
        FieldRule(("spec", "hostRef"), SubAction.INVENTORY_CHANGE),
        FieldRule(("spec", "serialNumber"), SubAction.INVENTORY_CHANGE),
        FieldRule(("metadata", "annotations", "dpufleet.io/allow-downgrade"), SubAction.IMAGE_FLASH),
    ),
    "Host": (
        FieldRule(("spec", "lessee"), SubAction.LEASE_CHANGE),
        FieldRule(("spec", "bmcRef"), SubAction.INVENTORY_CHANGE),
        FieldRule(("spec", "powerURL"), SubAction.BMC_CREDENTIAL_CHANGE),
        FieldRule(("spec", "powerCredentialsRef"), SubAction.BMC_CREDENTIAL_CHANGE),
    ),
    "DPUSet": (
        FieldRule(("spec", "template", "image"), SubAction.IMAGE_FLASH),
        FieldRule(("spec", "template", "flavor"), SubAction.IMAGE_FLASH),
    ),
    "DPUFlavor": (FieldRule(("spec", "firmwareParameters"), SubAction.FIRMWARE_UPDATE),),
    "BMC": (
        FieldRule(("spec", "address"), SubAction.BMC_CREDENTIAL_CHANGE),
        FieldRule(("spec", "credentialsRef"), SubAction.BMC_CREDENTIAL_CHANGE),
        FieldRule(("spec", "verifyTLS"), SubAction.BMC_CREDENTIAL_CHANGE),
    ),
    "Discovery": (FieldRule(("spec", "credentialsRef"), SubAction.BMC_CREDENTIAL_CHANGE),),
    "DPUService": (
        FieldRule(("spec", "artifact", "kernelModule"), SubAction.PRIVILEGED_SERVICE),
        FieldRule(("spec", "privileged"), SubAction.PRIVILEGED_SERVICE),
    ),
    "DPUDeployment": (
        FieldRule(("spec", "dpuSet", "template", "image"), SubAction.IMAGE_FLASH),
        FieldRule(("spec", "dpuSet", "template", "flavor"), SubAction.IMAGE_FLASH),
    ),
}
# Every write of these kinds is the sub-action, whatever it changes.
SENSITIVE_KINDS: dict[str, SubAction] = {
    "Credential": SubAction.BMC_CREDENTIAL_CHANGE,
    "PowerAction": SubAction.POWER_ACTION,
    "UpdateRequest": SubAction.IMAGE_FLASH,  # it asks for spec.image to change, whoever files it
}


def _at(doc: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = doc
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def sensitive_actions(
    kind: str, verb: Verb, current: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> list[SubAction]:
    """The sub-actions a write carries: a sensitive field that the write sets, changes or clears.

    Status writes never carry one (status is observed state). Creating an object with a
    sensitive field set counts as setting it; deleting one with it set counts as clearing it,
    so a tenant cannot delete and re-create its way around the rule.
    """
    if verb == Verb.STATUS_UPDATE or verb in READ:
        return []
    found: list[SubAction] = []
    if kind in SENSITIVE_KINDS:
        found.append(SENSITIVE_KINDS[kind])
    for rule in SENSITIVE_FIELDS.get(kind, ()):
        # an empty or false value is no value: a default `privileged: false` sets nothing
        if (_at(current, rule.path) or None) != (_at(new, rule.path) or None) and rule.action not in found:
            found.append(rule.action)
    if kind == "DPUDeployment" and _privileged_bundle(current) != _privileged_bundle(new):
        found.append(SubAction.PRIVILEGED_SERVICE)  # the services it writes carry the DPUService rule
    return found


def _privileged_bundle(doc: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """A DPUDeployment's services that are privileged or load a kernel module, with those fields."""
    services = _at(doc, ("spec", "services"))
    found: dict[str, tuple[Any, Any]] = {}
    for name, spec in (services or {}).items() if isinstance(services, Mapping) else ():
        privileged, module = _at(spec, ("privileged",)) or None, _at(spec, ("artifact", "kernelModule")) or None
        if privileged or module:
            found[str(name)] = (privileged, module)
    return found


# --- decisions ---------------------------------------------------------------------------------------------


def lessee_cap(role: Role) -> Role | None:
    """What a role granted in the lessee project becomes on the leased object."""
    if role == Role.VIEWER:
        return Role.VIEWER
    if role in (Role.ADMIN, Role.OPERATOR, Role.TENANT):
        return Role.TENANT
    if role == Role.CLOUD_SERVICE:
        return Role.CLOUD_SERVICE
    return None


def first_denied(roles: Iterable[Role], kind: str, verb: Verb, subs: Iterable[SubAction]) -> str | None:
    """The first action these roles may not take (kind:verb, then each sub-action), or None."""
    held = set(roles)
    if not held & allowed_roles(kind, verb):
        return action_name(kind, verb)
    for sub in subs:
        if not held & SUBACTION_RULES[sub]:
            return sub.value
    return None


def allowed_for(action: str) -> frozenset[Role]:
    """The roles allowed an action named as in the table (`dpus:patch` or `image-flash`)."""
    if ":" in action:
        plural, _, verb = action.partition(":")
        for info in REGISTRY.values():
            if info.plural == plural:
                return allowed_roles(info.kind, Verb(verb))
        return frozenset({Role.ADMIN})
    return SUBACTION_RULES[SubAction(action)]


# --- the table as documentation ----------------------------------------------------------------------------


def render_markdown() -> str:
    roles = list(Role)
    head = "| action | " + " | ".join(r.value for r in roles) + " |\n|---|" + "---|" * len(roles) + "\n"

    def row(name: str, allowed: frozenset[Role]) -> str:
        return f"| `{name}` | " + " | ".join("yes" if r in allowed else "·" for r in roles) + " |\n"

    out = [
        "# Security policy (generated)\n\n",
        "Generated from `src/dpufleet/security/policy.py` by `dpufleet policy --markdown`; do not edit by hand.\n\n",
        "A request is allowed when one of the caller's roles on the object allows its kind and verb, "
        "and one allows every sensitive sub-action the request carries. Roles come from system-wide "
        "grants, grants in the object's project (`metadata.project`, the owner), and grants in the "
        "object's lessee project (`spec.lessee`), which count at most as `tenant` (a viewer stays a viewer).\n\n",
        "A caller with no role in the object's owner or lessee project gets 404 Not Found, "
        "exactly as if the object did not exist. A caller with a role there that does not allow the "
        "action gets 403 Forbidden naming its roles and the action.\n\n",
        "## Kinds and verbs\n\n",
        head,
    ]
    for kind in REGISTRY:
        for verb in ALL_VERBS:
            if verb == Verb.STATUS_UPDATE and not REGISTRY[kind].has_status:
                continue
            out.append(row(action_name(kind, verb), allowed_roles(kind, verb)))
    out += ["\n## Sensitive sub-actions\n\n", head]
    for sub in SubAction:
        out.append(row(sub.value, SUBACTION_RULES[sub]))
    out.append("\n## How sub-actions are detected\n\n")
    for sub in SubAction:
        out.append(f"- `{sub.value}`: {SUBACTION_DOC[sub]}\n")
    out.append(
        "\nA field counts when the write sets, changes or clears it (create sets every field it "
        "carries; delete clears them). Status writes never carry a sub-action.\n\n"
        "Routes outside the table: `/healthz`, `/readyz` and `/openapi.json` need no token; "
        "`/version`, `/auth/v1/whoami` and the kind discovery document need any valid token.\n"
    )
    return "".join(out)
