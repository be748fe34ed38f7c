"""Errors a client can cause or meet, each with its HTTP status.

The store and the server raise these; the server turns them into a JSON
`Status` body; the CLI prints the message as one line. Anything else is a bug
and answers 500.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    code = 500
    reason = "InternalError"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(APIError):
    code = 400
    reason = "BadRequest"


class Invalid(APIError):
    """The document is well-formed but a field is wrong; details.causes names each field."""

    code = 422
    reason = "Invalid"


class Unauthorized(APIError):
    code = 401
    reason = "Unauthorized"


class Forbidden(APIError):
    code = 403
    reason = "Forbidden"


class NotFound(APIError):
    code = 404
    reason = "NotFound"


class AlreadyExists(APIError):
    code = 409
    reason = "AlreadyExists"


class Conflict(APIError):
    """A write carried a resourceVersion that is no longer current."""

    code = 409
    reason = "Conflict"


class Gone(APIError):
    """A watch asked for history that has been compacted away: re-list, then watch again."""

    code = 410
    reason = "Expired"


class TooLarge(APIError):
    code = 413
    reason = "RequestEntityTooLarge"


class UnsupportedMediaType(APIError):
    code = 415
    reason = "UnsupportedMediaType"


class Timeout(APIError):
    """The server waited for someone else (a DPU's agent) longer than the request allows."""

    code = 504
    reason = "Timeout"


ERRORS_BY_REASON: dict[str, type[APIError]] = {
    cls.reason: cls
    for cls in (
        BadRequest,
        Invalid,
        Unauthorized,
        Forbidden,
        NotFound,
        AlreadyExists,
        Conflict,
        Gone,
        TooLarge,
        UnsupportedMediaType,
        Timeout,
    )
}
