"""`/api/v1/orchestrator/nodes`: list, describe, and approve, reject or delete compute nodes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway import wire
from gateway.auth import principal
from gateway.errors import BadRequest
from gateway.models import NodeMembership
from gateway.responses import JSONResponse
from gateway.services import read_json, services

_ACTIONS = {"approve": NodeMembership.APPROVED, "reject": NodeMembership.REJECTED}


async def list_nodes(request: Request) -> JSONResponse:
    svc = services(request)
    nodes = await svc.db(svc.store.nodes)
    approval = (request.query_params.get("filter-approval") or "").upper()
    status = (request.query_params.get("filter-status") or "").upper()
    if approval and approval not in NodeMembership.__members__:
        raise BadRequest("filter-approval: must be PENDING, APPROVED or REJECTED")
    if status and status not in ("CONNECTED", "DISCONNECTED"):
        raise BadRequest("filter-status: must be CONNECTED or DISCONNECTED")
    chosen = [n for n in nodes if (not approval or n.membership == approval) and (not status or n.connection == status)]
    return JSONResponse({"Nodes": [wire.node(n) for n in chosen], "NextToken": ""})


async def get_node(request: Request) -> JSONResponse:
    svc = services(request)
    node = await svc.db(svc.store.find_node, request.path_params["ref"])
    return JSONResponse({"Node": wire.node(node)})


async def update_node(request: Request) -> JSONResponse:
    """`{Action: approve|reject|delete, NodeID, Message}`; the node may also be named in the path."""
    svc = services(request)
    body = await read_json(request)
    action = str(body.get("Action", "")).lower()
    ref = request.path_params.get("ref") or str(body.get("NodeID", ""))
    if not ref:
        raise BadRequest("NodeID: field required")
    if action == "delete":
        await svc.db(svc.store.delete_node, ref)
    elif action in _ACTIONS:
        await svc.db(svc.store.set_membership, ref, _ACTIONS[action])
    else:
        raise BadRequest("Action: must be approve, reject or delete")
    svc.work.notify()  # an approved node may now claim; rescheduled work may go elsewhere
    await svc.db(svc.audit.record, principal(request).name, f"node.{action}", ref,
                 detail=str(body.get("Message", ""))[:1024])
    return JSONResponse({"Success": True})


_NODES = "/api/v1/orchestrator/nodes"

routes = [
    Route(_NODES, list_nodes, methods=["GET"]),
    Route(_NODES, update_node, methods=["PUT", "POST"]),
    Route(_NODES + "/{ref}", get_node, methods=["GET"]),
    Route(_NODES + "/{ref}", update_node, methods=["PUT"]),
]
