"""Reaching a BMC: the one way the controllers and the server open a session with a DPU's BMC.

Like Ironic's task object (load once, hand to every caller), a `BMCSession` holds what every
caller needs and used to resolve itself: the BMC object, its credentials read from its
Credential (and the Credential's secret), a pooled Redfish client (drivers/redfish/pool.py: one
connection per BMC for the process, whoever asks) and, for a DPU, the path of the DPU's
ComputerSystem on that BMC. `BMCSessions` opens them; the inventory crawl, provisioning, power
actions, health (its polls and event subscriptions) and the server's BMC log route all use it.

What is read from the store is kept for `max_age` seconds (60 by default): a thousand DPUs polled
every few seconds would otherwise read the BMC, its Credential and its secret on every pass. A
caller that read the BMC object itself passes it, and a changed address, TLS setting or
credentialsRef is seen at once; a caller whose request failed calls `BMCSession.failed()` so the
credentials are read again at the next open (they may just have been rotated). New credentials or
a new address give a new pooled connection, and the old one is closed.

What the store lacks is a `BMCAccessError` with a reason and one message naming the BMC: no BMC
(`NoBMC`), a Credential that does not exist (`CredentialsMissing`). What the BMC answers (or not)
stays a RedfishError of the client (BMCUnreachable names the address and the timeout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..api.errors import NotFound
from ..drivers.redfish.client import Credentials, RedfishClient
from ..drivers.redfish.install import find_dpu_system
from ..drivers.redfish.pool import RedfishPool, pool
from ..store.store import Store

CREDENTIALS_SECONDS = 60.0


class BMCAccessError(Exception):
    """The BMC cannot be reached for a reason found in the store (not on the wire)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class BMCAccess:
    """A BMC as resolved from the store: where it is, how to talk to it, with what credentials."""

    project: str
    name: str
    address: str
    verify: bool
    credentials_ref: str | None
    credentials: Credentials | None
    resource: dict[str, Any] = field(repr=False, compare=False)
    read_at: float = field(compare=False)  # time.monotonic()

    def matches(self, bmc: dict[str, Any]) -> bool:
        """Whether a BMC object read since still names this address, TLS setting and Credential."""
        spec = bmc.get("spec") or {}
        return (spec.get("address"), spec.get("verifyTLS", True), spec.get("credentialsRef") or None) == (
            self.address,
            self.verify,
            self.credentials_ref,
        )


def dpu_bmc(dpu: dict[str, Any]) -> str | None:
    """The name of the DPU's BMC: the one whose crawl found it (status.bmc), else the one its spec names."""
    return (dpu.get("status") or {}).get("bmc") or (dpu.get("spec") or {}).get("bmcRef")


def dpu_serial(dpu: dict[str, Any]) -> str | None:
    return (dpu.get("status") or {}).get("serialNumber") or (dpu.get("spec") or {}).get("serialNumber")


@dataclass
class BMCSession:
    """One caller's handle on a BMC: the BMC, its credentials, a pooled client, the DPU's system."""

    access: BMCAccess
    client: RedfishClient
    dpu: dict[str, Any] | None
    sessions: BMCSessions = field(repr=False)

    @property
    def bmc(self) -> dict[str, Any]:
        return self.access.resource

    @property
    def name(self) -> str:
        return self.access.name

    @property
    def project(self) -> str:
        return self.access.project

    @property
    def credentials(self) -> Credentials | None:
        return self.access.credentials

    async def system(self, *, rediscover: bool = False) -> str:
        """The @odata.id of the DPU's ComputerSystem: known from an earlier lookup or from the crawl
        (status.bmcSystem), else found on the BMC by serial number (SystemType DPU). `rediscover`
        asks the BMC again (after a failure: the recorded path may be stale)."""
        if self.dpu is None:
            raise ValueError("a session opened without a DPU has no DPU system")
        serial = dpu_serial(self.dpu)
        key = (self.access.address, serial)
        systems = self.sessions.systems
        if not rediscover:
            found = systems.get(key) or (self.dpu.get("status") or {}).get("bmcSystem")
            if found:
                systems[key] = found
                return str(found)
        found = await find_dpu_system(self.client, serial)
        systems[key] = found
        return found

    def failed(self) -> None:
        """A request failed: the credentials are read again at the next open (they may have changed)."""
        self.sessions.invalidate(self.project, self.name)


class BMCSessions:
    """Opens BMC sessions; keeps what it read from the store for `max_age` seconds."""

    def __init__(
        self, store: Store, *, redfish_pool: RedfishPool | None = None, max_age: float = CREDENTIALS_SECONDS
    ) -> None:
        self.store = store
        self.max_age = max_age
        self._pool = redfish_pool  # None: the running event loop's (drivers/redfish/pool.py)
        self._token = object()  # this factory's BMCs, as owners in a pool other factories may share
        self._access: dict[tuple[str, str], BMCAccess] = {}
        self.systems: dict[tuple[str, str | None], str] = {}  # (address, serial) -> the DPU's system path

    @property
    def pool(self) -> RedfishPool:
        return self._pool or pool()

    async def open(
        self,
        project: str,
        name: str,
        *,
        bmc: dict[str, Any] | None = None,
        dpu: dict[str, Any] | None = None,
        max_age: float | None = None,
        timeout: float = 10.0,
        retries: int = 2,
    ) -> BMCSession:
        """A session with BMC `name` of `project`. `bmc`: the BMC object if the caller read it (a
        changed spec is seen at once); `max_age`: how old the credentials read before may be (0: read
        them now); `timeout` and `retries`: the caller's, per request. Raises BMCAccessError."""
        age = self.max_age if max_age is None else max_age
        access = self._access.get((project, name))
        fresh = access is not None and time.monotonic() - access.read_at < age and (bmc is None or access.matches(bmc))
        if access is None or not fresh:
            access = await self.store.call(self._resolve, project, name, bmc)
            self._access[(project, name)] = access
        client = await self.pool.client(
            (self._token, project, name),
            access.address,
            access.credentials,
            verify=access.verify,
            timeout=timeout,
            retries=retries,
        )
        if bmc is not None and bmc is not access.resource:
            access = BMCAccess(
                access.project, access.name, access.address, access.verify,
                access.credentials_ref, access.credentials, bmc, access.read_at,
            )  # fmt: skip
        return BMCSession(access, client, dpu, self)

    async def for_dpu(
        self,
        dpu: dict[str, Any],
        *,
        bmc: dict[str, Any] | None = None,
        max_age: float | None = None,
        timeout: float = 10.0,
        retries: int = 2,
    ) -> BMCSession:
        """A session with the DPU's BMC (`dpu_bmc`), whose `system()` is the DPU's."""
        meta = dpu["metadata"]
        name = dpu_bmc(dpu)
        if not name:
            raise BMCAccessError("NoBMC", f"dpu {meta['name']!r} is not managed through a BMC")
        return await self.open(
            meta["project"], name, bmc=bmc, dpu=dpu, max_age=max_age, timeout=timeout, retries=retries
        )

    def invalidate(self, project: str, name: str) -> None:
        """Read the BMC and its credentials again at the next open."""
        self._access.pop((project, name), None)

    async def forget(self, project: str, name: str) -> None:
        """The BMC is gone: drop what was read and close its connection (once its requests end)."""
        self._access.pop((project, name), None)
        await self.pool.release((self._token, project, name))

    def _resolve(self, project: str, name: str, bmc: dict[str, Any] | None) -> BMCAccess:
        """The BMC (unless given), its Credential and the Credential's secret, in one store thread."""
        if bmc is None:
            try:
                bmc = self.store.get("BMC", name, project)
            except NotFound:
                raise BMCAccessError("NoBMC", f"BMC {name!r} does not exist in project {project!r}") from None
        spec = bmc.get("spec") or {}
        ref = spec.get("credentialsRef") or None
        credentials = None
        if ref:  # without one, anonymous: some BMCs allow reads; the BMC says if not
            try:
                cred = self.store.get("Credential", ref, project)
                password = self.store.get_secret("Credential", ref, "password", project)
            except NotFound:
                raise BMCAccessError(
                    "CredentialsMissing", f"credentials {ref!r} of BMC {name!r} not found in project {project!r}"
                ) from None
            credentials = Credentials(str(cred["spec"]["username"]), password or "")
        return BMCAccess(
            project, name, str(spec["address"]), bool(spec.get("verifyTLS", True)), ref, credentials, bmc,
            time.monotonic(),
        )  # fmt: skip
