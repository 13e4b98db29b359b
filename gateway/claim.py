"""Claiming: a polling node takes the waiting executions it may run now.

Runs inside the store's transaction. The node's row is locked first, so two claims for one node never
over-commit it; candidate executions are locked with SKIP LOCKED (PostgreSQL) or serialised by SQLite's
write lock, so no execution is ever claimed twice.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import exists
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from gateway.models import (
    ACTIVE_EXECUTION_STATES,
    DesiredState,
    ExecutionRecord,
    ExecutionState,
    JobRecord,
    NodeConnection,
    NodeMembership,
    NodeRecord,
)
from gateway.placement import Needs, Resources, matches, unsuitable

WINDOW = 256  # waiting executions looked at per claim, oldest first


def resources_of(execution: ExecutionRecord) -> Resources:
    return Resources(execution.cpu, execution.memory, execution.disk, execution.gpu)


def free_capacity(session: Session, node: NodeRecord) -> Resources:
    """The node's capacity less what its active executions asked for."""
    active = session.exec(select(ExecutionRecord).where(
        col(ExecutionRecord.node_id) == node.id,
        col(ExecutionRecord.compute_state).in_(ACTIVE_EXECUTION_STATES),
    )).all()
    used = sum((resources_of(e) for e in active), Resources())
    return Resources.from_capacity(node.capacity) - used


def choose(session: Session, node_id: str, limit: int, needs_of: Callable[[JobRecord], Needs]) -> list[ExecutionRecord]:
    """The executions this node should take now, at most `limit`; the caller marks them claimed."""
    node = session.exec(select(NodeRecord).where(col(NodeRecord.id) == node_id).with_for_update()).first()
    if node is None or node.membership != NodeMembership.APPROVED or not node.engines:
        return []
    free = free_capacity(session, node)
    prior = aliased(ExecutionRecord)
    failed_here = (
        exists()
        .where(col(prior.job_id) == ExecutionRecord.job_id)
        .where(col(prior.job_version) == ExecutionRecord.job_version)
        .where(col(prior.partition_index) == ExecutionRecord.partition_index)
        .where(col(prior.node_id) == node.id)
        .where(col(prior.id) != ExecutionRecord.id)
        .where(col(prior.compute_state) == ExecutionState.FAILED)
    )
    waiting = (
        select(ExecutionRecord, JobRecord)
        .join(JobRecord, col(JobRecord.id) == col(ExecutionRecord.job_id))
        .where(
            col(ExecutionRecord.compute_state) == ExecutionState.NEW,
            col(ExecutionRecord.desired_state) == DesiredState.RUNNING,
            col(ExecutionRecord.engine).in_(node.engines),
            col(ExecutionRecord.node_id).is_(None) | (col(ExecutionRecord.node_id) == node.id),
            ~failed_here,
        )
        .order_by(col(ExecutionRecord.create_time), col(ExecutionRecord.partition_index))
    )
    chosen: list[ExecutionRecord] = []
    seen: list[str] = []
    needs_by_job: dict[str, Needs] = {}
    # Lock a few candidates at a time, skipping those another claim holds (PostgreSQL; SQLite's write lock
    # serialises claims anyway): claims running at once on several replicas each take different executions.
    while len(chosen) < limit and len(seen) < WINDOW:
        query = waiting.where(col(ExecutionRecord.id).not_in(seen)) if seen else waiting
        batch = session.exec(query.limit(min(max(2 * limit, 8), WINDOW - len(seen)))
                             .with_for_update(skip_locked=True, of=ExecutionRecord)).all()
        if not batch:
            break
        for execution, job in batch:
            seen.append(execution.id)
            needs = needs_by_job.setdefault(job.id, needs_of(job))
            if len(chosen) == limit or unsuitable(node, needs, free):
                continue
            if not all(matches(p, node.labels) for p in needs.preferences) and _preferred_elsewhere(
                    session, node, needs):
                continue
            chosen.append(execution)
            free = free - needs.resources
    return chosen


def _preferred_elsewhere(session: Session, node: NodeRecord, needs: Needs) -> bool:
    """Whether another connected node that meets the job's preferences has a free slot for it."""
    others = session.exec(select(NodeRecord).where(
        col(NodeRecord.id) != node.id,
        col(NodeRecord.membership) == NodeMembership.APPROVED,
        col(NodeRecord.connection) == NodeConnection.CONNECTED,
        col(NodeRecord.free_slots) > 0,
    )).all()
    return any(
        all(matches(p, other.labels) for p in needs.preferences)
        and not unsuitable(other, needs, free_capacity(session, other))
        for other in others
    )
