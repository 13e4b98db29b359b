"""Claiming: a polling node takes the waiting executions it may run now.

Runs inside the store's transaction. The node's row is locked first, so two claims for one node never
over-commit it; the executions it chooses are then locked with SKIP LOCKED where they still wait (PostgreSQL),
or claims are serialised by SQLite's write lock, so no execution is ever claimed twice.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

from sqlalchemy import String, bindparam, exists, tuple_
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
ROUNDS = 8  # times a claim chooses again when claims on other replicas took what it chose (PostgreSQL)
MAX_BUSY = 8  # jobs that do not fit the node's free resources now, after which a claim stops looking
MAX_SKIPPED = 512  # jobs a claim passes over at most (each costs a query, and widens the next ones)
NEVER_PER_NODE = 64  # job versions remembered per node as ones it can never run
NEVER_NODES = 4096  # nodes remembered (each as it is now: labels, engines, capacity...)


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
           slots: int | None = None) -> list[tuple[ExecutionRecord, JobRecord]]:
    """The executions this node should take now (with their jobs), at most `limit`, and with `slots` (how many the
    node runs at once) no more than its slots not taken by its active executions; the caller marks them claimed.
    Counting the node's executions here, under its row lock, means a poll never takes more than the node can run,
    however its completions and polls interleave."""
    node = session.exec(select(NodeRecord).where(col(NodeRecord.id) == node_id).with_for_update()).first()
    if node is None or node.membership != NodeMembership.APPROVED or not node.engines:
        return []
    active = _active(session, node)
    if slots is not None:
        limit = min(limit, slots - len(active))
        if limit <= 0:
            return []
    scan = _Scan(session, node, needs_of, free_capacity(session, node, active))
    taken: list[ExecutionRecord] = []
    for _ in range(ROUNDS):
        chosen = scan.pick(limit - len(taken))
        locked = _locked(session, node, [execution for execution, _ in chosen.values()])
        taken += locked
        lost = chosen.keys() - {e.id for e in locked}
        if not lost or len(taken) == limit or scan.done:
            break
        scan.lost(chosen, lost)
    return [(execution, scan.jobs[execution.job_id]) for execution in taken]


class _Never:
    """The job versions each node, as it is now, can never run (a constraint it does not meet, more resources than
    it has): later claims leave them out of their first query instead of passing over them one query each. Per
    process; a node whose labels, engines, publishers, sources or capacity change is a new entry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: OrderedDict[str, OrderedDict[tuple[str, int], None]] = OrderedDict()

    @staticmethod
    def key(node: NodeRecord) -> str:
        return json.dumps([node.id, node.labels, sorted(node.engines), sorted(node.publishers),
                           sorted(node.storage_sources), node.capacity], sort_keys=True, default=str)

    def of(self, key: str) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._known.get(key, ()))

    def add(self, key: str, job_id: str, version: int) -> None:
        with self._lock:
            versions = self._known.setdefault(key, OrderedDict())
            self._known.move_to_end(key)
            versions[(job_id, version)] = None
            while len(versions) > NEVER_PER_NODE:
                versions.popitem(last=False)
            while len(self._known) > NEVER_NODES:
                self._known.popitem(last=False)


_NEVER = _Never()


class _Scan:
    """The waiting executions one claim looks at, job by job, and what the node has left for them. A job the
    node cannot take is passed over whole; the scan ends early once MAX_BUSY jobs did not fit only because the
    node's resources are taken now (it is busy, not unsuited: looking further would mostly find more of the
    same, at a query per job), or MAX_SKIPPED jobs were passed over."""

    def __init__(self, session: Session, node: NodeRecord, needs_of: Callable[[JobRecord], Needs],
                 free: Resources) -> None:
        self.session, self.node, self.needs_of, self.free = session, node, needs_of, free
        self.capacity = Resources.from_capacity(node.capacity)
        self.skipped: set[str] = set()  # jobs this node cannot take now: their other executions are not looked at
        self.seen: set[str] = set()  # executions taken by this claim, or first by a claim on another replica
        self.jobs: dict[str, JobRecord] = {}  # those read (the session keeps them only while they are referenced)
        self.key = _Never.key(node)
        self.never = _NEVER.of(self.key)  # job versions left out of the scan altogether
        self.busy = 0
        self.done = False

    def pick(self, wanted: int) -> dict[str, tuple[ExecutionRecord, Needs]]:
        chosen: dict[str, tuple[ExecutionRecord, Needs]] = {}
        node = self.node
        for execution, needs in _candidates(self.session, node, self.needs_of, self.jobs, self.skipped, self.seen,
                                            self.never, wanted):
            if unsuitable(node, needs, self.free) or (
                    not all(matches(p, node.labels) for p in needs.preferences)
                    and _preferred_elsewhere(self.session, node, needs)):
                self.skipped.add(execution.job_id)
                if unsuitable(node, needs, self.capacity):
                    _NEVER.add(self.key, execution.job_id, execution.job_version)
                else:
                    self.busy += 1
                if self.busy >= MAX_BUSY or len(self.skipped) >= MAX_SKIPPED:
                    self.done = True
                    break
                continue
            chosen[execution.id] = (execution, needs)
            self.free = self.free - needs.resources
            if len(chosen) == wanted:
                break
        else:
            self.done = True
        return chosen

    def lost(self, chosen: dict[str, tuple[ExecutionRecord, Needs]], lost: set[str]) -> None:
        """Some of what it chose went to claims on other replicas: look again past them."""
        self.seen |= chosen.keys()
        for execution_id in lost:  # what it would have used is free again
            self.free = self.free + chosen[execution_id][1].resources


def _locked(session: Session, node: NodeRecord, chosen: list[ExecutionRecord]) -> list[ExecutionRecord]:
    """Those of the chosen executions this claim could lock while they still wait: a claim on another replica
    may have taken some meanwhile (PostgreSQL; SQLite's write lock serialises claims). Only chosen executions
    are locked, so a claim never hides from the others work it does not take."""
    if not chosen:
        return []
    ids = set(session.exec(
        select(ExecutionRecord.id).where(
            col(ExecutionRecord.id).in_([e.id for e in chosen]),
            col(ExecutionRecord.compute_state) == ExecutionState.NEW,
            col(ExecutionRecord.desired_state) == DesiredState.RUNNING,
            col(ExecutionRecord.node_id).is_(None) | (col(ExecutionRecord.node_id) == node.id),
        ).with_for_update(skip_locked=True)
    ).all())
    return [e for e in chosen if e.id in ids]


def _candidates(session: Session, node: NodeRecord, needs_of: Callable[[JobRecord], Needs],
                jobs: dict[str, JobRecord], skipped: set[str], seen: set[str], never: list[tuple[str, int]],
                size: int) -> Iterator[tuple[ExecutionRecord, Needs]]:
    """Waiting executions the node may take and what their jobs need, oldest first, at most SCAN_LIMIT, but none
    of the jobs in `skipped` (which the caller adds to), of the job versions in `never`, nor the executions in
    `seen`. They are read a batch at a time (`size` first, as many as the claim wants, then twice as many each time
    up to BATCH), and a job once, into `jobs`, when one of its executions comes up."""
    waiting, params = _WAITING, {"node": node.id, "engines": list(node.engines)}
    if never:
        waiting = waiting.where(tuple_(col(ExecutionRecord.job_id), col(ExecutionRecord.job_version)).not_in(never))
    needs_by_job: dict[str, Needs] = {}
    after: tuple[int, int, str] | None = None
    scanned = 0
    while scanned < SCAN_LIMIT:
        query = waiting.where(col(ExecutionRecord.job_id).not_in(skipped)) if skipped else waiting
        if seen:
            query = query.where(col(ExecutionRecord.id).not_in(seen))
        if after is not None:
            query = query.where(tuple_(col(ExecutionRecord.create_time), col(ExecutionRecord.partition_index),
                                       col(ExecutionRecord.id)) > after)
        batch = session.exec(query.limit(size), params=params).all()
        if not batch:
            return
        scanned += len(batch)
        size = min(2 * size, BATCH)
        after = (batch[-1].create_time, batch[-1].partition_index, batch[-1].id)
        for execution in batch:
            if execution.job_id in skipped:
                continue
            if execution.job_id not in needs_by_job:
                job = session.get(JobRecord, execution.job_id)
                if job is None:
                    continue
                jobs[job.id], needs_by_job[job.id] = job, needs_of(job)
            yield execution, needs_by_job[execution.job_id]


def _waiting() -> SelectOfScalar[ExecutionRecord]:
    """Waiting executions of the node's engines, oldest first, never one of a partition that failed on it (the
    node's ID and engines are the `node` and `engines` parameters). Built once: building it costs more than
    running it."""
    prior = aliased(ExecutionRecord)
    node_id = bindparam("node", type_=String)
    failed_here = (
        exists()
        .where(col(prior.job_id) == ExecutionRecord.job_id)
        .where(col(prior.job_version) == ExecutionRecord.job_version)
        .where(col(prior.partition_index) == ExecutionRecord.partition_index)
        .where(col(prior.node_id) == node_id)
        .where(col(prior.id) != ExecutionRecord.id)
        .where(col(prior.compute_state) == ExecutionState.FAILED)
    )
    return (
        select(ExecutionRecord)
        .where(
            col(ExecutionRecord.compute_state) == ExecutionState.NEW,
            col(ExecutionRecord.desired_state) == DesiredState.RUNNING,
            col(ExecutionRecord.engine).in_(bindparam("engines", expanding=True, type_=String)),
            col(ExecutionRecord.node_id).is_(None) | (col(ExecutionRecord.node_id) == node_id),
            ~failed_here,
        )
        .order_by(col(ExecutionRecord.create_time), col(ExecutionRecord.partition_index), col(ExecutionRecord.id))
    )


_WAITING = _waiting()


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
