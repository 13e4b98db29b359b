"""Errors the gateway raises; one handler in `app.py` turns each into Bacalhau's error shape.

    GatewayError                 500 unless a subclass says otherwise
     ├── BadRequest              400 (a spec or parameter is wrong; names the field)
     ├── Unauthorized            401
     ├── Forbidden               403
     ├── NotFound                404
     ├── Conflict                409 (the object is not in a state that allows this)
     ├── PayloadTooLarge         413
     ├── TooManyRequests         429 (failed authentication from one client, too often)
     └── ConfigurationError      the gateway cannot start or serve as configured
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error raised by the gateway."""

    status = 500
    code = "InternalError"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadRequest(GatewayError):
    """The request is malformed; the message names the field."""

    status = 400
    code = "BadRequest"


class Unauthorized(GatewayError):
    """No valid credentials."""

    status = 401
    code = "Unauthorized"


class Forbidden(GatewayError):
    """Valid credentials that do not allow this."""

    status = 403
    code = "Forbidden"


class NotFound(GatewayError):
    """No such object (or not one the caller may see)."""

    status = 404
    code = "NotFound"


class Conflict(GatewayError):
    """The object is not in a state that allows this request."""

    status = 409
    code = "Conflict"


class PayloadTooLarge(GatewayError):
    """The request body is over its limit."""

    status = 413
    code = "PayloadTooLarge"


class ConfigurationError(GatewayError):
    """The gateway cannot start or serve as configured."""

    code = "ConfigurationError"


class TooManyRequests(GatewayError):
    """Too many failed attempts from one client; try again later."""

    status = 429
    code = "TooManyRequests"


def error_body(status: int, message: str, code: str, request_id: str, hint: str = "") -> dict[str, object]:
    """Bacalhau's error shape, with the request's ID."""
    body: dict[str, object] = {"Status": status, "Message": message, "Code": code, "RequestID": request_id}
    if hint:
        body["Hint"] = hint
    return body
