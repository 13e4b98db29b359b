"""JSON answers written with orjson: an assignment carries its task's spec (tens of KB with inline inputs), and
the standard library's encoder took about 50 times as long to write one."""

from __future__ import annotations

from typing import Any

import orjson
from starlette import responses


def dumps(value: Any) -> bytes:
    """Compact JSON in UTF-8; keys that are not strings are written as strings, as `json.dumps` writes them."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)
