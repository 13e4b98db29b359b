"""Credentials over HTTP: scoped CI tokens (`/api/v1/auth/tokens`), node join tokens, and the audit log.

A token is made by a user (not by another token), with at most the user's capabilities, in one namespace the
user may see; its secret is in the answer to its creation and nowhere else. Users see and revoke the tokens
they made; an administrator (`*`) sees and revokes all, and reads the audit log.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import ADMIN, grants, principal, visible_namespace
from gateway.auth_config import CAPABILITIES
from gateway.errors import BadRequest, Forbidden
from gateway.models import AuditRecord, TokenRecord
from gateway.responses import JSONResponse
from gateway.services import query_int, read_json, services
from gateway.store import now_ns

MAX_TOKEN_SECONDS = 365 * 24 * 3600
DEFAULT_TOKEN_SECONDS = 24 * 3600


def _token(record: TokenRecord) -> dict[str, Any]:
    return {
        "ID": record.id, "Name": record.name, "Prefix": record.prefix, "Capabilities": record.capabilities,
        "Namespace": record.namespace, "CreatedBy": record.created_by, "CreateTime": record.create_time,
        "ExpireTime": record.expire_time, "LastUsed": record.last_used, "RevokeTime": record.revoke_time,
        "Active": record.revoke_time is None and record.expire_time > now_ns(),
    }


def _expires_in(body: dict[str, Any], default: int, maximum: int) -> int:
    value = body.get("ExpiresIn", default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise BadRequest(f"ExpiresIn: must be a whole number of seconds between 1 and {maximum}")
    return value


async def create_token(request: Request) -> JSONResponse:
    """`{Name, Capabilities, Namespace?, ExpiresIn? (seconds, default a day)}` → `{Token, Secret}`."""
    svc = services(request)
    caller = principal(request)
    if caller.kind == "token":
        raise Forbidden("a token cannot create tokens: use a user's credentials")
    body = await read_json(request)
    name = body.get("Name")
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
        raise BadRequest("Name: must be 1 to 100 printable characters")
    capabilities = body.get("Capabilities")
    if not isinstance(capabilities, list) or not capabilities or not all(c in CAPABILITIES for c in capabilities):
        raise BadRequest(f"Capabilities: must be a list of {', '.join(CAPABILITIES)}")
    for capability in capabilities:
        if not grants(caller.capabilities, capability):
            raise Forbidden(f"'{caller.name}' cannot grant the capability '{capability}' it does not have")
    namespace = body.get("Namespace") or caller.default_namespace
    if not isinstance(namespace, str):
        raise BadRequest("Namespace: must be a namespace name")
    visible_namespace(request, namespace)
    expires_in = _expires_in(body, DEFAULT_TOKEN_SECONDS, MAX_TOKEN_SECONDS)
    record, secret = await svc.db(
        svc.auth.tokens.create, name=name, capabilities=list(dict.fromkeys(capabilities)), namespace=namespace,
        expires_in=expires_in, created_by=caller.name)
    await svc.db(svc.audit.record, caller.name, "token.create", record.id, namespace=namespace,
                 detail=f"{name}: {', '.join(record.capabilities)}")
    return JSONResponse({"Token": _token(record), "Secret": secret}, status_code=201)


def _owner(request: Request) -> str | None:
    """Whose tokens the caller may see: its own, or everyone's for an administrator."""
    caller = principal(request)
    return None if caller.can(ADMIN) else caller.name


async def list_tokens(request: Request) -> JSONResponse:
    svc = services(request)
    records = await svc.db(svc.auth.tokens.list, _owner(request))
    return JSONResponse({"Items": [_token(r) for r in records]})


async def revoke_token(request: Request) -> JSONResponse:
    svc = services(request)
    record = await svc.db(svc.auth.tokens.revoke, request.path_params["id"], _owner(request))
    await svc.db(svc.audit.record, principal(request).name, "token.revoke", record.id,
                 namespace=record.namespace, detail=record.name)
    return JSONResponse({"Token": _token(record)})


async def create_join_token(request: Request) -> JSONResponse:
    """`{ExpiresIn? (seconds, default an hour)}` → `{ID, Secret, ExpireTime}`: `shoal agent --token SECRET`."""
    svc = services(request)
    body = await read_json(request)
    expires_in = _expires_in(body, 3600, 30 * 24 * 3600)
    caller = principal(request)
    record, secret = await svc.db(svc.auth.tokens.create_join_token, expires_in=expires_in, created_by=caller.name)
    await svc.db(svc.audit.record, caller.name, "node.join-token.create", record.id)
    return JSONResponse({"ID": record.id, "Secret": secret, "ExpireTime": record.expire_time}, status_code=201)


def _entry(record: AuditRecord) -> dict[str, Any]:
    return {"Seq": record.seq, "Time": record.time, "Actor": record.actor, "Action": record.action,
            "Target": record.target, "Namespace": record.namespace, "Detail": record.detail}


async def audit(request: Request) -> JSONResponse:
    """Oldest first; `next_token` is the sequence number to continue after; filter by `actor`, `action`."""
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    after = query_int(request, "next_token", 0, maximum=2**31 - 1)  # a sequence number (32-bit column)
    svc = services(request)
    entries = await svc.db(svc.audit.read, after=after, limit=limit + 1, actor=request.query_params.get("actor", ""),
                           action=request.query_params.get("action", ""))
    page = entries[:limit]
    next_token = str(page[-1].seq) if len(entries) > limit else ""
    return JSONResponse({"Items": [_entry(e) for e in page], "NextToken": next_token})


routes = [
    Route("/api/v1/auth/tokens", create_token, methods=["POST"]),
    Route("/api/v1/auth/tokens", list_tokens, methods=["GET"]),
    Route("/api/v1/auth/tokens/{id}", revoke_token, methods=["DELETE"]),
    Route("/api/v1/orchestrator/nodes/join-tokens", create_join_token, methods=["POST"]),
    Route("/api/v1/audit", audit, methods=["GET"]),
]
