"""Errors the agent raises. Each one that reaches an execution fails it (a system error, retried
elsewhere); a task's own non-zero exit code is not an error.

    AgentError
     ├── GatewayError        the gateway refused or could not be reached
     │    └── NotRegistered  the node credential is unknown: register again
     ├── InputError          an input could not be fetched or laid out
     ├── ExecutorError       the engine could not run the task (image, module, limits)
     │    └── TimeoutExpired the task ran past its execution timeout
     └── PublishError        results could not be archived or uploaded
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error raised by the compute agent."""


class GatewayError(AgentError):
    """The gateway refused a request or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotRegistered(GatewayError):
    """The gateway does not know this node's credential."""


class InputError(AgentError):
    """An input source could not be fetched or laid out."""


class ExecutorError(AgentError):
    """The engine could not run the task."""


class TimeoutExpired(ExecutorError):
    """The task ran past its execution timeout."""


class PublishError(AgentError):
    """Results could not be archived or uploaded."""
