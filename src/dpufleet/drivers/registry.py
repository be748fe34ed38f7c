"""Install drivers by name: what `spec.installPath` / a catalog model's `install_paths` can name."""

from __future__ import annotations

from ..store.store import Store
from .agent.host_channel import HostChannelInstall
from .agent.install import AgentInstall
from .base import InstallInterface
from .redfish.client import RedfishClient
from .redfish.install import RedfishUpdateInstall
from .redfish.netboot import RedfishHttpBootInstall, RedfishVirtualMediaInstall

BMC_PATHS: dict[str, type[RedfishUpdateInstall] | type[RedfishHttpBootInstall] | type[RedfishVirtualMediaInstall]] = {
    RedfishUpdateInstall.name: RedfishUpdateInstall,
    RedfishHttpBootInstall.name: RedfishHttpBootInstall,
    RedfishVirtualMediaInstall.name: RedfishVirtualMediaInstall,
}
AGENT_PATHS = {AgentInstall.name, HostChannelInstall.name}
NO_BMC_PATHS = frozenset({HostChannelInstall.name})  # reach the DPU without its BMC (through its host)
INSTALL_PATH_NAMES = frozenset(BMC_PATHS) | AGENT_PATHS


def build_install_driver(
    path: str,
    client: RedfishClient | None,
    system: str | None,
    *,
    store: Store,
    project: str,
    dpu: str,
    os_target: str | None = None,
) -> InstallInterface | None:
    """The driver for `path` on one DPU, or None if there is no such path. Only NO_BMC_PATHS take no client."""
    if path == HostChannelInstall.name:
        return HostChannelInstall(store, project, dpu, os_target=os_target)
    if client is None or system is None:
        raise ValueError(f"install path {path!r} needs the DPU's BMC")
    if path in BMC_PATHS:
        return BMC_PATHS[path](client, system)
    if path == AgentInstall.name:
        return AgentInstall(store, project, dpu, client, system, os_target=os_target)
    return None
