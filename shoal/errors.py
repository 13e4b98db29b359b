"""Errors shared by the client side of Shoal.

    ShoalError
     ├── SpecError        a job spec is malformed; names the field
     ├── APIError         the gateway answered with an error (status, message, code, hint)
     │    └── NotFoundError
     ├── ConnectError     the gateway could not be reached
     └── ResultsError     results could not be downloaded, verified or extracted
"""

from __future__ import annotations


class ShoalError(Exception):
    """Root of every error raised by the `shoal` package."""


class SpecError(ShoalError):
    """A job spec is malformed; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class APIError(ShoalError):
    """The gateway answered with an error."""

    def __init__(self, status: int, message: str, code: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.message} (HTTP {self.status})"
        return f"{text}\nHint: {self.hint}" if self.hint else text


class NotFoundError(APIError):
    """The gateway has no such object."""


class ConnectError(ShoalError):
    """The gateway could not be reached."""


class ResultsError(ShoalError):
    """Results could not be downloaded, verified or extracted."""
