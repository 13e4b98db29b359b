"""Claiming: a polling node takes the waiting executions it may run now.

Runs inside the store's transaction. The node's row is locked first, so two claims for one node never
over-commit it; candidate executions are locked with SKIP LOCKED (PostgreSQL) or serialised by SQLite's
write lock, so no execution is ever claimed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sqlalchemy import exists, tuple_
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

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

BATCH = 256  # waiting executions locked and looked at per query, oldest first
SCAN_LIMIT = 4096  # at most this many per claim (which holds the write lock meanwhile on SQLite)


def resources_of(execution: ExecutionRecord) -> Resources:
    return Resources(execution.cpu, execution.memory, execution.disk, execution.gpu)


def _active(session: Session, node: NodeRecord) -> list[ExecutionRecord]:
    return list(session.exec(select(ExecutionRecord).where(
        col(ExecutionRecord.node_id) == node.id,
        col(ExecutionRecord.compute_state).in_(ACTIVE_EXECUTION_STATES),
    )).all())


def free_capacity(session: Session, node: NodeRecord, active: list[ExecutionRecord] | None = None) -> Resources:
    """The node's capacity less what its active executions asked for."""
    used = sum((resources_of(e) for e in (_active(session, node) if active is None else active)), Resources())
    return Resources.from_capacity(node.capacity) - used


def choose(session: Session, node_id: str, limit: int, needs_of: Callable[[JobRecord], Needs], *,
           slots: int | None = None) -> list[ExecutionRecord]:
    """The executions this node should take now, at most `limit`, and with `slots` (how many the node runs at
    once) no more than its slots not taken by its active executions; the caller marks them claimed. Counting
    the node's executions here, under its row lock, means a poll never takes more than the node can run, however
    its completions and polls interleave."""
    node = session.exec(select(NodeRecord).where(col(NodeRecord.id) == node_id).with_for_update()).first()
    if node is None or node.membership != NodeMembership.APPROVED or not node.engines:
        return []
    active = _active(session, node)
    if slots is not None:
        limit = min(limit, slots - len(active))
        if limit <= 0:
            return []
    free = free_capacity(session, node, active)
    chosen: list[ExecutionRecord] = []
    skipped: set[str] = set()  # jobs this node cannot take now: their other executions are not looked at
    for execution, needs in _candidates(session, node, needs_of, skipped, min(max(2 * limit, 32), BATCH)):
        if unsuitable(node, needs, free) or (
                not all(matches(p, node.labels) for p in needs.preferences)
                and _preferred_elsewhere(session, node, needs)):
            skipped.add(execution.job_id)
            continue
        chosen.append(execution)
        free = free - needs.resources
        if len(chosen) == limit:
            break
    return chosen


def _candidates(session: Session, node: NodeRecord, needs_of: Callable[[JobRecord], Needs], skipped: set[str],
                size: int) -> Iterator[tuple[ExecutionRecord, Needs]]:
    """Waiting executions the node may take and what their jobs need, oldest first, at most SCAN_LIMIT, but none
    of the jobs in `skipped` (which the caller adds to). They are locked `size` at a time, skipping those another
    claim holds (PostgreSQL; SQLite's write lock serialises claims anyway), so claims running at once on several
    replicas take different executions."""
    waiting = _waiting(node)
    needs_by_job: dict[str, Needs] = {}
    after: tuple[int, int, str] | None = None
    scanned = 0
    while scanned < SCAN_LIMIT:
        query = waiting.where(col(ExecutionRecord.job_id).not_in(skipped)) if skipped else waiting
        if after is not None:
            query = query.where(tuple_(col(ExecutionRecord.create_time), col(ExecutionRecord.partition_index),
                                       col(ExecutionRecord.id)) > after)
        batch = session.exec(query.limit(size).with_for_update(skip_locked=True)).all()
        if not batch:
            return
        scanned += len(batch)
        after = (batch[-1].create_time, batch[-1].partition_index, batch[-1].id)
        unknown = {e.job_id for e in batch} - needs_by_job.keys()
        if unknown:
            for job in session.exec(select(JobRecord).where(col(JobRecord.id).in_(unknown))):
                needs_by_job[job.id] = needs_of(job)
        for execution in batch:
            if execution.job_id not in skipped and execution.job_id in needs_by_job:
                yield execution, needs_by_job[execution.job_id]


def _waiting(node: NodeRecord) -> SelectOfScalar[ExecutionRecord]:
    """Waiting executions of the node's engines, oldest first, never one of a partition that failed on it."""
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
    return (
        select(ExecutionRecord)
        .where(
            col(ExecutionRecord.compute_state) == ExecutionState.NEW,
            col(ExecutionRecord.desired_state) == DesiredState.RUNNING,
            col(ExecutionRecord.engine).in_(node.engines),
            col(ExecutionRecord.node_id).is_(None) | (col(ExecutionRecord.node_id) == node.id),
            ~failed_here,
        )
        .order_by(col(ExecutionRecord.create_time), col(ExecutionRecord.partition_index), col(ExecutionRecord.id))
    )


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
