"""Claiming: a polling node takes the waiting executions it may run now.

Runs inside the store's transaction, which has locked the node's row first, so two claims for one node never
over-commit it; the executions it chooses are then claimed in one statement that locks them with SKIP LOCKED where
they still wait (PostgreSQL), or claims are serialised by SQLite's write lock, so no execution is ever claimed twice.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Row, String, bindparam, exists, func, literal, select, tuple_, update

from gateway import direct
from gateway.models import (
    EXECUTIONS,
    JOB_SPEC,
    JOBS,
    NODES,
    DesiredState,
    ExecutionState,
    NodeConnection,
    NodeMembership,
    NodeRecord,
)
from gateway.placement import Needs, Node, Resources, matches, unsuitable
from gateway.statements import ACTIVE_HERE, CLAIM, CLAIMED

BATCH = 256  # waiting executions looked at per query at most, oldest first
MIN_BATCH = 4  # and at least
MAX_BATCHES = 1024  # queries for them per claim at most (most pass over a job the node cannot run)
HEADS = 64  # jobs whose first waiting execution one query finds, when a claim jumps past the jobs it passes over
JUMP = 2**62  # a partition index past any: where a jump past a job's executions begins
SCAN_LIMIT = 4096  # at most this many looked at per claim (which holds the write lock meanwhile on SQLite)
ROUNDS = 8  # times a claim chooses again when claims on other replicas took what it chose (PostgreSQL)
MAX_BUSY = 8  # jobs that do not fit the node's free resources now, after which a claim stops looking
MAX_SKIPPED = 512  # jobs a claim reads and passes over at most
NEVER_PER_NODE = 8192  # job versions remembered per node as ones it can never run
NEVER_TOTAL = 262_144  # and in all (a few tens of MB at most); the nodes used longest ago are forgotten first

# Statements are SQL Core, built once with bound parameters: building a statement, or the ORM's unit of work, costs
# more than running it, and a claim runs on every poll that finds work.
_USED = select(EXECUTIONS.c.cpu, EXECUTIONS.c.memory, EXECUTIONS.c.disk, EXECUTIONS.c.gpu).where(*ACTIVE_HERE)
_JOBS = select(JOBS, JOB_SPEC).where(JOBS.c.id.in_(bindparam("ids", expanding=True)))
# CLAIM, of those that still wait (PostgreSQL: claims on other replicas may have taken some); returns those it took
_TAKE = update(EXECUTIONS).where(EXECUTIONS.c.id.in_(select(EXECUTIONS.c.id).where(
    EXECUTIONS.c.id.in_(bindparam("ids", expanding=True)),
    EXECUTIONS.c.compute_state == ExecutionState.NEW,
    EXECUTIONS.c.desired_state == DesiredState.RUNNING,
    EXECUTIONS.c.node_id.is_(None) | (EXECUTIONS.c.node_id == bindparam("claimer")),
).with_for_update(skip_locked=True))).values(CLAIMED).returning(EXECUTIONS.c.id)


def _free(node: Node, used: Sequence[Row[Any, Any, Any, Any]]) -> Resources:
    """The node's capacity less what its active executions (`used`, rows of `_USED`) asked for."""
    return Resources.from_capacity(node.capacity) - sum((Resources(*row) for row in used), Resources())


def take(db: Connection, node: NodeRecord, limit: int, needs_of: Callable[[dict[str, Any]], Needs], *,
         lease: int, now: int, slots: int | None = None) -> list[tuple[Row[Any], Row[Any]]]:
    """Claim the waiting executions the node should take now, their leases ending at `lease`; returns them with
    their jobs (rows of both tables, as they were before the claim). `node` is its row, which the caller has locked
    and read in the transaction of `db`. At most `limit`, and with `slots` (how many the node runs at once) no more
    than its slots not taken by its active executions.
    Counting the node's executions here, under its row lock, means a poll never takes more than the node can run,
    however its completions and polls interleave."""
    if limit <= 0 or node.membership != NodeMembership.APPROVED or not node.engines:
        return []
    used = direct.run(db, _USED, {"node": node.id})
    if slots is not None:
        limit = min(limit, slots - len(used))
        if limit <= 0:
            return []
    scan = _Scan(db, node, needs_of, _free(node, used))
    claim = {"claimer": node.id, "lease": lease, "now": now}
    taken: list[Row[Any]] = []
    for _ in range(ROUNDS):
        chosen = scan.pick(limit - len(taken))
        locked = _claimed(db, chosen, claim)
        taken += locked
        lost = chosen.keys() - {e.id for e in locked}
        if not lost or len(taken) == limit or scan.done:
            break
        scan.lost(chosen, lost)
    return [(execution, scan.jobs[execution.job_id][0]) for execution in taken]


class _Never:
    """The job versions each node, as it is now, can never run (a constraint it does not meet, more resources than
    it has): later claims pass over them without reading their jobs. Per process; a node whose labels, engines,
    publishers, sources or capacity change is a new entry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: OrderedDict[str, OrderedDict[tuple[str, int], None]] = OrderedDict()
        self._total = 0

    @staticmethod
    def key(node: Node) -> str:
        return json.dumps([node.id, node.labels, sorted(node.engines), sorted(node.publishers),
                           sorted(node.storage_sources), node.capacity], sort_keys=True, default=str)

    def of(self, key: str) -> set[tuple[str, int]]:
        with self._lock:
            return set(self._known.get(key, ()))

    def add(self, key: str, job_id: str, version: int) -> None:
        with self._lock:
            versions = self._known.setdefault(key, OrderedDict())
            self._known.move_to_end(key)
            if (job_id, version) not in versions:
                versions[(job_id, version)] = None
                self._total += 1
            if len(versions) > NEVER_PER_NODE:
                versions.popitem(last=False)
                self._total -= 1
            while self._total > NEVER_TOTAL:
                self._total -= len(self._known.popitem(last=False)[1])


_NEVER = _Never()


class _Scan:
    """The waiting executions one claim looks at, job by job, and what the node has left for them. A job the
    node cannot take is passed over whole; the scan ends early once MAX_BUSY jobs did not fit only because the
    node's resources are taken now (it is busy, not unsuited: looking further would mostly find more of the
    same, at a query per job), or MAX_SKIPPED jobs were passed over."""

    def __init__(self, db: Connection, node: NodeRecord, needs_of: Callable[[dict[str, Any]], Needs],
                 free: Resources) -> None:
        self.db, self.node, self.needs_of, self.free = db, node, needs_of, free
        self.capacity = Resources.from_capacity(node.capacity)
        self.skipped: set[str] = set()  # jobs this node cannot take now: their other executions are not looked at
        self.seen: set[str] = set()  # executions taken by this claim, or first by a claim on another replica
        self.jobs: dict[str, tuple[Row[Any], Needs]] = {}  # the jobs read, by ID, and what each needs
        self.key = _Never.key(node)
        self.never = _NEVER.of(self.key)  # job versions passed over without reading them
        self.busy = 0
        self.done = False

    def pick(self, wanted: int) -> dict[str, tuple[Row[Any], Needs]]:
        chosen: dict[str, tuple[Row[Any], Needs]] = {}
        node = self.node
        for execution, needs in self._candidates(wanted):
            if needs is None:  # more than the node has free now, by the execution's row: its job was not read
                if self._pass_over(execution, never=not _fits(execution, self.capacity)):
                    break
                continue
            if unsuitable(node, needs, self.free) or (
                    not all(matches(p, node.labels) for p in needs.preferences)
                    and _preferred_elsewhere(self.db, node, needs)):
                if self._pass_over(execution, never=bool(unsuitable(node, needs, self.capacity))):
                    break
                continue
            chosen[execution.id] = (execution, needs)
            self.free = self.free - needs.resources
            if len(chosen) == wanted:
                break
        else:
            self.done = True
        return chosen

    def _pass_over(self, execution: Row[Any], *, never: bool) -> bool:
        """Pass over the job of `execution`, which the node can `never` run or cannot run now; True when the scan
        should end here."""
        self.skipped.add(execution.job_id)
        if never:
            _NEVER.add(self.key, execution.job_id, execution.job_version)
        else:
            self.busy += 1
        self.done = self.busy >= MAX_BUSY or len(self.skipped) >= MAX_SKIPPED
        return self.done

    def lost(self, chosen: dict[str, tuple[Row[Any], Needs]], lost: set[str]) -> None:
        """Some of what it chose went to claims on other replicas: look again past them."""
        self.seen |= chosen.keys()
        for execution_id in lost:  # what it would have used is free again
            self.free = self.free + chosen[execution_id][1].resources

    def _candidates(self, size: int) -> Iterator[tuple[Row[Any], Needs | None]]:
        """Waiting executions the node may take and what their jobs need, in queue order, at most SCAN_LIMIT, but
        none of the jobs in `skipped` (which `pick` adds to), of the job versions in `never`, nor the executions in
        `seen`. They are read as many at a time as the claim wants (at most BATCH), then, once it passes over some,
        at least MIN_BATCH at a time (at most MAX_BATCHES times), with the jobs of each batch not read before,
        except those whose executions ask for more than the node has free (their needs are None: a full node
        passes over them without reading their specs). A job passed over is jumped, however many executions it
        has: the next batch begins at the next job not passed over (`_next_job`)."""
        size = min(size, BATCH)
        after: tuple[int, str, int, str] | None = None
        scanned = 0
        for _ in range(MAX_BATCHES):
            batch = self._batch(after, size) if scanned < SCAN_LIMIT else []
            if not batch:
                return
            never, jobs = self.never, self.jobs
            considered = [e for e in batch if (e.job_id, e.job_version) not in never]
            scanned += len(considered)
            fitting = {e.job_id for e in considered if _fits(e, self.free)}  # what is free only shrinks meanwhile
            if unread := fitting - jobs.keys():
                for job in direct.run(self.db, _JOBS, {"ids": list(unread)}):
                    jobs[job.id] = job, self.needs_of(job.spec)
            for execution in considered:
                if execution.job_id in self.skipped:
                    continue
                if execution.job_id in jobs:
                    yield execution, jobs[execution.job_id][1]
                elif execution.job_id not in fitting:
                    yield execution, None
            last = batch[-1]
            if self._passed(last):
                after, crossed = self._next_job((last.create_time, last.job_id, JUMP, ""))
                if after is None:
                    return
                scanned += crossed
            else:
                after = _order(last)
            size = min(max(size, MIN_BATCH), BATCH)

    def _passed(self, execution: Row[Any]) -> bool:
        """Whether the claim passes over the job of `execution` (a row with its job's ID and version)."""
        return execution.job_id in self.skipped or (execution.job_id, execution.job_version) in self.never

    def _next_job(self, after: tuple[int, str, int, str]) -> tuple[tuple[int, str, int, str] | None, int]:
        """Where the first job after `after` that the claim does not pass over begins (None: no other job waits),
        and how many jobs it passed over to get there. Each engine's next jobs are found HEADS to a query, each job's
        first waiting execution one index seek in the statement: a queue of many jobs the node cannot run is
        crossed HEADS jobs a query, not one."""
        starts, crossed = [], 0
        for engine in self.node.engines:
            place: tuple[int, str, int, str] | None = after
            while place is not None and place[2] == JUMP and crossed < SCAN_LIMIT:
                heads = direct.run(self.db, _HEADS, _at(place) | {"count": HEADS, "engine": engine})
                place = None
                for head in heads:
                    if not self._passed(head):
                        place = (head.create_time, head.job_id, -1, "")
                        break
                    crossed += 1
                else:
                    if len(heads) == HEADS:  # more may wait past them
                        place = (heads[-1].create_time, heads[-1].job_id, JUMP, "")
            if place is not None:
                starts.append(place)
        return min(starts, default=None), crossed

    def _batch(self, after: tuple[int, str, int, str] | None, size: int) -> list[Row[Any]]:
        """The first `size` waiting executions after `after`, of any of the node's engines: each engine's are
        read in the order of the claim's index, and merged."""
        query = _WAITING if after is None else _WAITING_AFTER
        params: dict[str, Any] = {"node": self.node.id, "size": size}
        if after is not None:
            params |= _at(after)
        read: Callable[[Connection, Any, dict[str, Any]], list[Any]] = direct.run
        if self.seen:  # a statement of its own (PostgreSQL, when claims elsewhere took what this one chose), which
            query = query.where(EXECUTIONS.c.id.not_in(self.seen))  # `direct` would compile and keep for good
            read = _through_sqlalchemy
        rows = [row for engine in sorted(self.node.engines)
                for row in read(self.db, query, params | {"engine": engine})]
        return sorted(rows, key=_order)[:size] if len(self.node.engines) > 1 else rows


def _fits(execution: Row[Any], free: Resources) -> bool:
    """Whether what an execution asks for (its row's copy of its job's resources) fits in `free`."""
    return Resources(execution.cpu, execution.memory, execution.disk, execution.gpu).fits_in(free)


def _through_sqlalchemy(db: Connection, query: Any, params: dict[str, Any]) -> list[Any]:
    return list(db.execute(query, params).all())


_PLACE = ("time", "job", "partition", "id")  # the parameters of a place in the queue, in the order of `_order`


def _at(place: tuple[int, str, int, str]) -> dict[str, Any]:
    """A place in the queue as the parameters of `_WAITING_AFTER` and `_HEADS`."""
    return dict(zip(_PLACE, place, strict=True))


def _order(execution: Row[Any]) -> tuple[int, str, int, str]:
    """An execution's place in the queue: oldest first; a job's executions created together, by partition."""
    return execution.create_time, execution.job_id, execution.partition_index, execution.id


def _claimed(db: Connection, chosen: dict[str, tuple[Row[Any], Needs]], claim: dict[str, Any]) -> list[Row[Any]]:
    """Claim the chosen executions that still wait: a claim on another replica may have taken some meanwhile
    (PostgreSQL; SQLite's write lock keeps them). Only chosen executions are locked, so a claim never hides from the
    others work it does not take."""
    if not chosen:
        return []
    if db.dialect.name == "sqlite":
        direct.run(db, CLAIM, claim | {"ids": list(chosen)})
        return [execution for execution, _ in chosen.values()]
    ids = set(direct.run(db, _TAKE, claim | {"ids": list(chosen)}).scalars())
    return [execution for execution, _ in chosen.values() if execution.id in ids]


def _waiting() -> Any:
    """Waiting executions of one engine of the node, in queue order, never one of a partition that failed on it
    (the node's ID and the engine are the `node` and `engine` parameters, and at most `size` of them): the
    index `ix_executions_waiting` has them in that order, so that the executions of other engines are never
    read, and a claim can jump past a job's executions."""
    prior = EXECUTIONS.alias("prior")
    node_id = bindparam("node", type_=String)
    failed_here = (
        exists()
        .where(prior.c.job_id == EXECUTIONS.c.job_id)
        .where(prior.c.job_version == EXECUTIONS.c.job_version)
        .where(prior.c.partition_index == EXECUTIONS.c.partition_index)
        .where(prior.c.node_id == node_id)
        .where(prior.c.id != EXECUTIONS.c.id)
        .where(prior.c.compute_state == ExecutionState.FAILED)
    )
    return (
        select(EXECUTIONS)
        .where(
            EXECUTIONS.c.compute_state == ExecutionState.NEW,
            EXECUTIONS.c.engine == bindparam("engine", type_=String),
            EXECUTIONS.c.desired_state == DesiredState.RUNNING,
            EXECUTIONS.c.node_id.is_(None) | (EXECUTIONS.c.node_id == node_id),
            ~failed_here,
        )
        .order_by(*_QUEUE_ORDER)
        .limit(bindparam("size"))
    )


_QUEUE_ORDER = (EXECUTIONS.c.create_time, EXECUTIONS.c.job_id, EXECUTIONS.c.partition_index, EXECUTIONS.c.id)
_WAITING = _waiting()
_WAITING_AFTER = _WAITING.where(tuple_(*_QUEUE_ORDER) > tuple_(*(bindparam(name) for name in _PLACE)))


def _heads() -> Any:
    """The first waiting execution (its queue place and job version) of each of the next `count` jobs of one engine
    after a place in the queue (the `time`, `job`, `partition` and `id` parameters), in queue order: a recursive
    query, each step an index seek of `ix_executions_waiting` past the job before (one seek among that job's
    create time, one past it: SQLite seeks a row value only against parameters). What else makes an execution one
    the node may take is left to `_WAITING`, which reads from the job found on."""
    step = EXECUTIONS.alias("step")
    order = (step.c.create_time, step.c.job_id, step.c.partition_index, step.c.id)

    def first(*where: Any) -> Any:
        return (select(step.c.id)
                .where(step.c.compute_state == ExecutionState.NEW, step.c.engine == bindparam("engine", type_=String),
                       *where)
                .order_by(*order).limit(1).scalar_subquery())

    heads = select(first(tuple_(*order) > tuple_(*(bindparam(name) for name in _PLACE)))
                   .label("id"), literal(1).label("depth")).cte("heads", recursive=True)
    found = EXECUTIONS.alias("found")
    heads = heads.union_all(
        select(func.coalesce(first(step.c.create_time == found.c.create_time, step.c.job_id > found.c.job_id),
                             first(step.c.create_time > found.c.create_time)),
               heads.c.depth + 1)
        .where(found.c.id == heads.c.id, heads.c.depth < bindparam("count")))
    return (select(EXECUTIONS.c.create_time, EXECUTIONS.c.job_id, EXECUTIONS.c.job_version)
            .join_from(heads, EXECUTIONS, EXECUTIONS.c.id == heads.c.id).order_by(heads.c.depth))


_HEADS = _heads()

_OTHERS = select(NODES).where(
    NODES.c.id != bindparam("node"),
    NODES.c.membership == NodeMembership.APPROVED,
    NODES.c.connection == NodeConnection.CONNECTED,
    NODES.c.free_slots > 0,
)


def _preferred_elsewhere(db: Connection, node: Node, needs: Needs) -> bool:
    """Whether another connected node that meets the job's preferences has a free slot for it."""
    return any(
        all(matches(p, other.labels) for p in needs.preferences)
        and not unsuitable(other, needs, _free(other, direct.run(db, _USED, {"node": other.id})))
        for other in direct.run(db, _OTHERS, {"node": node.id})
    )
