"""The gateway's OpenAPI description, served at `GET /api/v1/openapi.json`."""

from __future__ import annotations

from starlette.routing import Route

routes: list[Route] = []
