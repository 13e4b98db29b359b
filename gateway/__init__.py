"""The Shoal gateway: a stateless Starlette app that keeps jobs in SQL and hands work to compute agents."""

from gateway.app import create_app
from gateway.settings import Settings

__all__ = ["Settings", "create_app"]
