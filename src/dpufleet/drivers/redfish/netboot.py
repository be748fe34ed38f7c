"""Install paths that boot an installer from the network: UEFI HTTP boot and virtual media.

http-boot: PATCH the system's `Boot` to a one-time `UefiHttp` override with `HttpBootUri` set to
the repository's signed URL, then reset. virtual-media: `VirtualMedia.InsertMedia` with the
URL as `Image` on the BMC's CD, a one-time `Cd` override, then reset. Either way the installer
the DPU boots downloads the image, checks its sha256 (named in the URL), writes it, clears
the override and boots on; its stages show in `BootProgress` (`OEM` + `OemLastState`).

The handle polled is `<path>:<target>/<version>`: the install is done when the override was
consumed (the installer ran), the system runs, and the firmware inventory shows the version;
it failed when BootProgress shows `InstallerFailed: <reason>: ...`, or when the system runs
again without the version (the installer gave up and fell back; the SEL says why).
`activate` resets once more so the Rebooting phase sees the installed OS come up from cold.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ..base import InstallInterface, InstallProgress, InstallRequest, InstallState
from .client import RedfishClient, RedfishError
from .power import RedfishPower

_INSERT = "#VirtualMedia.InsertMedia"
_EJECT = "#VirtualMedia.EjectMedia"
_FAILED_PREFIX = "InstallerFailed:"


def _unsigned(uri: str | None) -> str:
    return (uri or "").split("?", 1)[0]


class _NetworkBootInstall(InstallInterface):
    override_target: str = ""

    def __init__(self, client: RedfishClient, system: str) -> None:
        self.client = client
        self.system = system

    # --- what both share --------------------------------------------------------------------------------

    async def _boot(self) -> dict[str, Any]:
        body = await self.client.get(self.system)
        return body["Boot"] if isinstance(body.get("Boot"), dict) else {}

    async def _firmware_item(self, target: str) -> dict[str, Any]:
        root = await self.client.lasting("/redfish/v1")
        link = self.client.link(root, "UpdateService")
        if not link:
            raise RedfishError(f"{self.client.base_url}: the BMC has no UpdateService (no firmware inventory)")
        inventory = self.client.link(await self.client.lasting(link), "FirmwareInventory")
        if not inventory:
            raise RedfishError(f"{self.client.base_url}: the UpdateService has no FirmwareInventory")
        return await self.client.get(f"{urlsplit(self.client.url(inventory)).path.rstrip('/')}/{target}")

    def _handle(self, request: InstallRequest) -> str:
        return f"{self.name}:{quote(request.target, safe='')}/{quote(request.version, safe='')}"

    async def _installer_failure(self) -> tuple[str, str] | None:
        """(reason, text) of the newest installer error in the BMC's event log, if it keeps one
        (ResourceEvent ResourceErrorsDetected: '<target> installer', '<reason>: <detail>')."""
        try:
            root = await self.client.lasting("/redfish/v1")
            managers = self.client.link(root, "Managers")
            if not managers:
                return None
            for manager in await self.client.members(managers):
                logs = self.client.link(manager, "LogServices")
                if not logs:
                    continue
                for service in await self.client.members(logs):
                    entries = self.client.link(service, "Entries")
                    if not entries:
                        continue
                    body = await self.client.get(entries)
                    for entry in reversed(body.get("Members") or []):
                        args = [str(a) for a in entry.get("MessageArgs") or []]
                        is_error = str(entry.get("MessageId", "")).endswith(".ResourceErrorsDetected")
                        if is_error and len(args) == 2 and args[0].endswith("installer"):
                            return args[1].split(":", 1)[0], args[1]
        except RedfishError:
            return None
        return None

    async def _reset(self) -> None:
        await RedfishPower(self.client, self.system).reset("ForceRestart")

    async def poll(self, handle: str) -> InstallProgress:
        _path, _, rest = handle.partition(":")
        target, _, version = (unquote(p) for p in rest.partition("/"))
        body = await self.client.get(self.system)
        progress: dict[str, Any] = body["BootProgress"] if isinstance(body.get("BootProgress"), dict) else {}
        boot: dict[str, Any] = body["Boot"] if isinstance(body.get("Boot"), dict) else {}
        state, oem = progress.get("LastState"), str(progress.get("OemLastState") or "")
        if state == "OEM" and oem.startswith(_FAILED_PREFIX):
            reason = oem[len(_FAILED_PREFIX) :].strip().split(":", 1)[0] or "InstallerFailed"
            return InstallProgress(InstallState.FAILED, None, oem, reason)
        if state == "OEM" and oem:
            return InstallProgress(InstallState.RUNNING, None, oem)
        pending = boot.get("BootSourceOverrideTarget") == self.override_target and boot.get(
            "BootSourceOverrideEnabled"
        ) in ("Once", "Continuous")
        if pending or body.get("PowerState") != "On" or state != "OSRunning":
            return InstallProgress(InstallState.RUNNING, None, f"boot progress {state}")
        running = (await self._firmware_item(target)).get("Version")
        if running == version:
            await self._done()
            return InstallProgress(InstallState.SUCCEEDED, 100, f"the installer wrote {target} {version}")
        reason, why = await self._installer_failure() or ("InstallerFailed", "the installer did not write it")
        return InstallProgress(
            InstallState.FAILED,
            None,
            f"the DPU booted its previous OS ({target} {running}, not {version}): InstallerFailed: {why}",
            reason,
        )

    async def _done(self) -> None:
        """Clean up what install() set (virtual media: eject)."""

    async def activate(self) -> None:
        await self._reset()


class RedfishHttpBootInstall(_NetworkBootInstall):
    """UEFI HTTP boot of an installer: a one-time `UefiHttp` override with `HttpBootUri`, and a reset."""

    name = "http-boot"
    override_target = "UefiHttp"

    async def validate(self, target: str) -> None:
        boot = await self._boot()
        if "UefiHttp" not in (boot.get("BootSourceOverrideTarget@Redfish.AllowableValues") or []):
            raise RedfishError(f"{self.client.url(self.system)}: UEFI HTTP boot is not offered")
        if "HttpBootUri" not in boot:
            raise RedfishError(
                f"{self.client.url(self.system)}: the BMC has no Boot.HttpBootUri (the URI would come from DHCP)"
            )
        await self._firmware_item(target)

    async def install(self, request: InstallRequest) -> str:
        await self.client.patch(
            self.system,
            {
                "Boot": {
                    "BootSourceOverrideTarget": "UefiHttp",
                    "BootSourceOverrideEnabled": "Once",
                    "HttpBootUri": request.image_url,
                }
            },
        )
        await self._reset()
        return self._handle(request)

    async def find_started(self, request: InstallRequest, since: str) -> str | None:
        boot = await self._boot()
        if _unsigned(boot.get("HttpBootUri")) == _unsigned(request.image_url):
            return self._handle(request)  # the override was set; the reset may or may not have been sent
        return None


class RedfishVirtualMediaInstall(_NetworkBootInstall):
    """Virtual media: the installer image inserted into the BMC's virtual CD, a one-time `Cd` boot, a reset."""

    name = "virtual-media"
    override_target = "Cd"

    async def _media(self) -> tuple[str, dict[str, Any]]:
        root = await self.client.lasting("/redfish/v1")
        managers = self.client.link(root, "Managers")
        if managers:
            for manager in await self.client.members(managers):
                link = self.client.link(manager, "VirtualMedia")
                if not link:
                    continue
                for media in await self.client.members(link):
                    if any(t in ("CD", "DVD") for t in media.get("MediaTypes") or []):
                        return str(media["@odata.id"]), media
        raise RedfishError(f"{self.client.base_url}: the BMC offers no virtual CD")

    async def validate(self, target: str) -> None:
        _uri, media = await self._media()
        if _INSERT not in (media.get("Actions") or {}):
            raise RedfishError(f"{self.client.base_url}: the virtual CD has no InsertMedia action")
        boot = await self._boot()
        if "Cd" not in (boot.get("BootSourceOverrideTarget@Redfish.AllowableValues") or []):
            raise RedfishError(f"{self.client.url(self.system)}: booting from CD is not offered")
        await self._firmware_item(target)

    async def _action(self, media: dict[str, Any], action: str) -> str:
        target = ((media.get("Actions") or {}).get(action) or {}).get("target")
        if not target:
            raise RedfishError(f"{self.client.base_url}: the virtual CD has no {action.lstrip('#')} action")
        return str(target)

    async def install(self, request: InstallRequest) -> str:
        _uri, media = await self._media()
        if media.get("Inserted"):  # a leftover (ours from an earlier attempt, or someone's): replace it
            await self.client.post(await self._action(media, _EJECT), {})
        await self.client.post(
            await self._action(media, _INSERT),
            {"Image": request.image_url, "Inserted": True, "WriteProtected": True, "TransferProtocolType": "HTTP"},
        )
        await self.client.patch(
            self.system, {"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}
        )
        await self._reset()
        return self._handle(request)

    async def find_started(self, request: InstallRequest, since: str) -> str | None:
        _uri, media = await self._media()
        if media.get("Inserted") and _unsigned(media.get("Image")) == _unsigned(request.image_url):
            return self._handle(request)
        return None

    async def _done(self) -> None:
        _uri, media = await self._media()
        if media.get("Inserted"):
            await self.client.post(await self._action(media, _EJECT), {})
