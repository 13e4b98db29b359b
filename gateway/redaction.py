"""Secrets a job spec may carry are not echoed back: job descriptions show `<redacted>` for the password in a
URL, signed or secret query parameters, and Env values whose names say they are secret. Agents get the spec as
it was submitted."""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE_KEY|API_KEY|ACCESS_KEY|SIGNATURE",
                          re.IGNORECASE)


def redact_url(url: str) -> str:
    if url.startswith("data:"):
        return url
    try:
        parts = urlsplit(url)
        host = parts.netloc
        if parts.password is not None:
            host = f"{parts.username}:{REDACTED}@{host.rpartition('@')[2]}"
        query = [(k, REDACTED if _SECRET_NAME.search(k.replace("-", "_")) else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        return urlunsplit(parts._replace(netloc=host, query=urlencode(query, safe="<>")))
    except ValueError:
        return REDACTED


def redact_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored job spec that is safe to show."""
    shown = copy.deepcopy(spec)
    for task in shown.get("Tasks") or []:
        env = task.get("Env") or {}
        for key in env:
            if _SECRET_NAME.search(key):
                env[key] = REDACTED
        params = (task.get("Engine") or {}).get("Params") or {}
        variables = params.get("EnvironmentVariables") or []
        params["EnvironmentVariables"] = [
            f"{item.partition('=')[0]}={REDACTED}" if _SECRET_NAME.search(item.partition("=")[0]) else item
            for item in variables
        ] if variables else variables
        for source in task.get("InputSources") or []:
            source_params = (source.get("Source") or {}).get("Params") or {}
            if isinstance(source_params.get("URL"), str):
                source_params["URL"] = redact_url(source_params["URL"])
            if isinstance(source.get("Alias"), str) and "://" in source["Alias"]:
                source["Alias"] = redact_url(source["Alias"])
    return shown
