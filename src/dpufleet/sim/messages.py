"""Redfish messages (DMTF registries) for errors, tasks and log entries.

Only the messages the emulator emits are listed; their text is the standard
registry text, so a client that resolves MessageIds against DMTF's registries
sees the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BASE_REGISTRY = "Base.1.22"
RESOURCE_EVENT_REGISTRY = "ResourceEvent.1.4"
UPDATE_REGISTRY = "Update.1.3"
TASK_EVENT_REGISTRY = "TaskEvent.1.0"
PLATFORM_REGISTRY = "Platform.1.3"
POWER_REGISTRY = "Power.1.2"
MANAGER_EVENT_REGISTRY = "ManagerEvent.1.0"


@dataclass(frozen=True)
class MessageTemplate:
    registry: str
    text: str
    severity: str
    resolution: str


_W_RESUBMIT = "resubmit the request if the operation failed."

MESSAGES: dict[str, MessageTemplate] = {
    "Success": MessageTemplate(BASE_REGISTRY, "The request completed successfully.", "OK", "None."),
    "Created": MessageTemplate(BASE_REGISTRY, "The resource was created successfully.", "OK", "None."),
    "GeneralError": MessageTemplate(
        BASE_REGISTRY,
        "A general error has occurred.  See Resolution for information on how to resolve the error, "
        "or @Message.ExtendedInfo if Resolution is not provided.",
        "Critical",
        "None.",
    ),
    "PropertyUnknown": MessageTemplate(
        BASE_REGISTRY,
        "The property %1 is not in the list of valid properties for the resource.",
        "Warning",
        "Remove the unknown property from the request body and " + _W_RESUBMIT,
    ),
    "PropertyValueTypeError": MessageTemplate(
        BASE_REGISTRY,
        "The value '%1' for the property %2 is not a type that the property can accept.",
        "Warning",
        "Correct the value for the property in the request body and " + _W_RESUBMIT,
    ),
    "PropertyValueNotInList": MessageTemplate(
        BASE_REGISTRY,
        "The value '%1' for the property %2 is not in the list of acceptable values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and " + _W_RESUBMIT,
    ),
    "PropertyNotWritable": MessageTemplate(
        BASE_REGISTRY,
        "The property %1 is a read-only property and cannot be assigned a value.",
        "Warning",
        "Remove the property from the request body and " + _W_RESUBMIT,
    ),
    "QueryNotSupported": MessageTemplate(
        BASE_REGISTRY,
        "Querying is not supported by the implementation.",
        "Warning",
        "Remove the query parameters and " + _W_RESUBMIT,
    ),
    "QueryParameterValueFormatError": MessageTemplate(
        BASE_REGISTRY,
        "The value '%1' for the parameter %2 is not a format that the parameter can accept.",
        "Warning",
        "Correct the value for the query parameter in the request and " + _W_RESUBMIT,
    ),
    "MalformedJSON": MessageTemplate(
        BASE_REGISTRY,
        "The request body submitted was malformed JSON and could not be parsed by the receiving service.",
        "Critical",
        "Ensure that the request body is valid JSON and resubmit the request.",
    ),
    "ActionNotSupported": MessageTemplate(
        BASE_REGISTRY,
        "The action %1 is not supported by the resource.",
        "Critical",
        "Check the Actions property in the resource for the supported actions.",
    ),
    "ActionParameterMissing": MessageTemplate(
        BASE_REGISTRY,
        "The action %1 requires the parameter %2 to be present in the request body.",
        "Critical",
        "Supply the action with the required parameter in the request body when the request is resubmitted.",
    ),
    "ActionParameterUnknown": MessageTemplate(
        BASE_REGISTRY,
        "The action %1 was submitted with the invalid parameter %2.",
        "Warning",
        "Correct the invalid action parameter and " + _W_RESUBMIT,
    ),
    "ActionParameterValueNotInList": MessageTemplate(
        BASE_REGISTRY,
        "The value '%1' for the parameter %2 in the action %3 is not in the list of acceptable values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and " + _W_RESUBMIT,
    ),
    "ActionParameterValueFormatError": MessageTemplate(
        BASE_REGISTRY,
        "The value '%1' for the parameter %2 in the action %3 is not a format that the parameter can accept.",
        "Warning",
        "Correct the value for the parameter in the request body and " + _W_RESUBMIT,
    ),
    "ResourceNotFound": MessageTemplate(
        BASE_REGISTRY,
        "The requested resource of type %1 named '%2' was not found.",
        "Critical",
        "Provide a valid resource identifier and resubmit the request.",
    ),
    "CreateFailedMissingReqProperties": MessageTemplate(
        BASE_REGISTRY,
        "The create operation failed because the required property %1 was missing from the request.",
        "Critical",
        "Correct the body to include the required property with a valid value and " + _W_RESUBMIT,
    ),
    "NoValidSession": MessageTemplate(
        BASE_REGISTRY,
        "There is no valid session established with the implementation.",
        "Critical",
        "Establish a session before attempting any operations.",
    ),
    "InsufficientPrivilege": MessageTemplate(
        BASE_REGISTRY,
        "There are insufficient privileges for the account or credentials associated with the current "
        "session to perform the requested operation.",
        "Critical",
        "Either abandon the operation or change the associated access rights and " + _W_RESUBMIT,
    ),
    "ServiceTemporarilyUnavailable": MessageTemplate(
        BASE_REGISTRY,
        "The service is temporarily unavailable.  Retry in %1 seconds.",
        "Critical",
        "Wait for the indicated retry duration and retry the operation.",
    ),
    "ResourceAlreadyExists": MessageTemplate(
        BASE_REGISTRY,
        "The requested resource of type %1 with the property %2 with the value '%3' already exists.",
        "Critical",
        "Do not repeat the create operation as the resource was already created.",
    ),
    "ResourceCannotBeDeleted": MessageTemplate(
        BASE_REGISTRY,
        "The delete request failed because the resource requested cannot be deleted.",
        "Critical",
        "Do not attempt to delete a non-deletable resource.",
    ),
    "OperationNotAllowed": MessageTemplate(
        BASE_REGISTRY, "The HTTP method is not allowed on this resource.", "Critical", "None."
    ),
    "ResourceInUse": MessageTemplate(
        BASE_REGISTRY,
        "The change to the requested resource failed because the resource is in use or in transition.",
        "Warning",
        "Remove the condition and " + _W_RESUBMIT,
    ),
    "ResourcePoweredOn": MessageTemplate(RESOURCE_EVENT_REGISTRY, "The resource '%1' has powered on.", "OK", "None."),
    "ResourcePoweringOn": MessageTemplate(RESOURCE_EVENT_REGISTRY, "The resource '%1' is powering on.", "OK", "None."),
    "ResourcePoweredOff": MessageTemplate(RESOURCE_EVENT_REGISTRY, "The resource '%1' has powered off.", "OK", "None."),
    "ResourcePoweringOff": MessageTemplate(
        RESOURCE_EVENT_REGISTRY, "The resource '%1' is powering off.", "OK", "None."
    ),
    "ResourceErrorsDetected": MessageTemplate(
        RESOURCE_EVENT_REGISTRY,
        "The resource property %1 has detected errors of type '%2'.",
        "Warning",
        "Resolution dependent upon error type.",
    ),
    "ResourceStatusChangedOK": MessageTemplate(
        RESOURCE_EVENT_REGISTRY, "The health of resource '%1' has changed to %2.", "OK", "None."
    ),
    "ResourceStatusChangedWarning": MessageTemplate(
        RESOURCE_EVENT_REGISTRY,
        "The health of resource '%1' has changed to %2.",
        "Warning",
        "Resolution dependent upon error type.",
    ),
    "ResourceStatusChangedCritical": MessageTemplate(
        RESOURCE_EVENT_REGISTRY,
        "The health of resource '%1' has changed to %2.",
        "Critical",
        "Resolution dependent upon error type.",
    ),
    "OperatingSystemCrash": MessageTemplate(
        PLATFORM_REGISTRY, "An operating system crash occurred.", "Critical", "Check additional diagnostic data."
    ),
    "DeviceWatchdogTimeout": MessageTemplate(
        PLATFORM_REGISTRY, "Device '%1' encountered a watchdog timeout.", "Critical", "Reset the device."
    ),
    "PCIeUncorrectableError": MessageTemplate(
        PLATFORM_REGISTRY, "PCIe device '%1' detected an uncorrectable error.", "Critical", "None."
    ),
    "PCIeLinkDown": MessageTemplate(PLATFORM_REGISTRY, "PCIe device '%1' lost its link.", "Critical", "None."),
    "MemoryUncorrectableError": MessageTemplate(
        PLATFORM_REGISTRY, "Memory device '%1' detected an uncorrectable error.", "Critical", "None."
    ),
    "DeviceBootTimeout": MessageTemplate(
        PLATFORM_REGISTRY, "Device '%1' encountered a boot timeout.", "Critical", "None."
    ),
    "DeviceInRecovery": MessageTemplate(
        PLATFORM_REGISTRY, "Device '%1' entered recovery mode due to: %2.", "Critical", "None."
    ),
    "LossOfInputPower": MessageTemplate(
        POWER_REGISTRY, "Loss of input power at '%1'.", "Warning", "Check the power source."
    ),
    "LineInputPowerRestored": MessageTemplate(POWER_REGISTRY, "Line input power at '%1' was restored.", "OK", "None."),
    "ManagerResetWatchdogTimer": MessageTemplate(
        MANAGER_EVENT_REGISTRY,
        "Manager `%1` performed a '%2' type of reset due to watchdog timer action.",
        "Warning",
        "None.",
    ),
    "UpdateInProgress": MessageTemplate(UPDATE_REGISTRY, "An update is in progress.", "OK", "None."),
    "InstallingOnComponent": MessageTemplate(UPDATE_REGISTRY, "Image '%1' is being installed on '%2'.", "OK", "None."),
    "UpdateSuccessful": MessageTemplate(
        UPDATE_REGISTRY, "Device '%1' successfully updated with image '%2'.", "OK", "None."
    ),
    "ApplyFailed": MessageTemplate(
        UPDATE_REGISTRY,
        "Installation of image '%1' to '%2' failed.",
        "Critical",
        "Try the update operation again.  If the issue persists, contact the service provider.",
    ),
}


def message_id(key: str) -> str:
    return f"{MESSAGES[key].registry}.{key}"


def render(key: str, *args: object) -> str:
    text = MESSAGES[key].text
    for index in range(len(args), 0, -1):  # %10 before %1
        text = text.replace(f"%{index}", str(args[index - 1]))
    return text


def message(key: str, *args: object) -> dict[str, Any]:
    """A Message.v1_x object for ``@Message.ExtendedInfo`` or a Task's Messages."""
    template = MESSAGES[key]
    return {
        "@odata.type": "#Message.v1_2_1.Message",
        "MessageId": message_id(key),
        "Message": render(key, *args),
        "MessageArgs": [str(a) for a in args],
        "MessageSeverity": template.severity,
        "Resolution": template.resolution,
    }


class RedfishError(Exception):
    """An error answered as a Redfish error body with ``@Message.ExtendedInfo``."""

    def __init__(self, status: int, key: str, *args: object, headers: dict[str, str] | None = None) -> None:
        super().__init__(render(key, *args))
        self.status = status
        self.key = key
        self.args_ = args
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        info = message(self.key, *self.args_)
        return {
            "error": {
                "code": info["MessageId"],
                "message": info["Message"],
                "@Message.ExtendedInfo": [info],
            }
        }
