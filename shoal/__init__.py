"""Shoal: run Docker and WebAssembly jobs where the data lives.

This package holds what every client shares: the job spec, the HTTP client and the `shoal` CLI.
"""

from shoal.client import Client
from shoal.errors import APIError, ConnectError, NotFoundError, ResultsError, ShoalError, SpecError
from shoal.spec import Job, parse_job

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Client",
    "ConnectError",
    "Job",
    "NotFoundError",
    "ResultsError",
    "ShoalError",
    "SpecError",
    "__version__",
    "parse_job",
]
