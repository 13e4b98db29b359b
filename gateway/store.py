"""The job and execution store: submit, claim, lease, complete, fail, and the housekeeping sweeps.

Every method is one database transaction and is safe to call from several threads, processes or replicas:
claims lock the node's row and then the executions they take with SKIP LOCKED (see gateway/claim.py; SQLite
serialises writers instead), and every state change checks the state it starts from, on rows it has locked.
On PostgreSQL, locks are taken in one order, so that transactions never wait on each other in a circle: a node,
then a job, then its executions (several by ID); what locks in another order skips what is locked instead.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from gateway import audit, claim, direct, history, placement
from gateway import statements as sql
from gateway.db import READ_ONLY
from gateway.errors import BadRequest, Conflict, Forbidden, GatewayError, NotFound, Unauthorized
from gateway.history import Topic
from gateway.log_store import Chunk, store_chunks
from gateway.models import (
    ACTIVE_EXECUTION_STATES,
    AUDIT,
    EXECUTIONS,
    JOB_VERSIONS,
    JOBS,
    DesiredState,
    EventRecord,
    ExecutionRecord,
    ExecutionState,
    JobRecord,
    JobState,
    JobVersionRecord,
    NodeConnection,
    NodeMembership,
    NodeRecord,
    from_row,
    new_record,
)
from gateway.placement import Needs, Resources
from shoal.spec import NODE_BOUND_TYPES, Job, JobType

NODE_CREDENTIAL_PREFIX = "shoal_node_"
NODE_CACHE_SECONDS = 60.0
NODE_CACHE_SIZE = 100_000  # nodes remembered at most (the oldest is forgotten first)
OUTPUT_CAP = 2048


def now_ns() -> int:
    return time.time_ns()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RunOutcome:
    """What an agent reports when a task has run: the exit code and the head of its output."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    started: int = 0  # when the task started (ns), if the agent did not say so with a status update


@dataclass(frozen=True)
class Completion:
    """An agent's report that one of its executions ran: its outcome, whether its results were published, and the
    last of its logs (those of a short task come along)."""

    execution_id: str
    outcome: RunOutcome
    published: bool = False
    logs: Sequence[Chunk] = ()


@dataclass(frozen=True)
class NodeInfo:
    """What an agent says about itself when it registers and on every poll."""

    name: str = ""
    labels: dict[str, str] | None = None
    engines: Sequence[str] = ()
    publishers: Sequence[str] = ()
    storage_sources: Sequence[str] = ()
    capacity: dict[str, Any] | None = None
    version: str = ""


@dataclass(frozen=True)
class Claimed:
    execution: ExecutionRecord
    job: JobRecord


class Store:
    """Jobs, executions and nodes in SQL; `lease_seconds` and `max_attempts` come from the settings."""

    def __init__(self, engine: Engine, *, lease_seconds: float, max_attempts: int, manual_approval: bool = False,
                 default_cpu: str = "500m", default_memory: str = "512Mb", queue_timeout: int = 0,
                 heartbeat_seconds: float = 0.0) -> None:
        self.engine = engine
        self.heartbeat_ns = int(heartbeat_seconds * 1e9)  # how old a heartbeat an idle poll may leave as it is
        self.manual_approval = manual_approval
        self.default_cpu, self.default_memory = default_cpu, default_memory
        self.default_queue_timeout = queue_timeout
        self._reader = engine.execution_options(**READ_ONLY)
        self.lease_ns = int(lease_seconds * 1e9)
        self.max_attempts = max_attempts
        self._nodes: dict[str, tuple[NodeRecord, float]] = {}  # credential digest: node, until (monotonic)
        self._remembering = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A transaction that writes (on SQLite it takes the write lock at BEGIN)."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session
            direct.insert_later(session)
            history.flush(session)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A transaction that only reads (on SQLite it runs beside writers, on WAL's snapshot)."""
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            yield session

    @staticmethod
    def _lock_job(session: Session, job_id: str, *, skip_locked: bool = False) -> JobRecord | None:
        """The job's row, locked and read afresh (None when missing, or locked elsewhere with `skip_locked`)."""
        return session.exec(select(JobRecord).where(col(JobRecord.id) == job_id)
                            .with_for_update(skip_locked=skip_locked)
                            .execution_options(populate_existing=True)).first()

    @staticmethod
    def _lock_executions(session: Session, query: Any, *, skip_locked: bool = False) -> Sequence[ExecutionRecord]:
        """The executions `query` selects, locked in ID order and read afresh: its conditions are checked again on
        rows another transaction changed meanwhile (PostgreSQL), so they still hold for what it returns."""
        return session.exec(query.order_by(col(ExecutionRecord.id)).with_for_update(skip_locked=skip_locked)
                            .execution_options(populate_existing=True)).all()

    def _each_locked(self, session: Session, where: tuple[Any, ...], *,
                     skip_locked: bool = False) -> Iterator[tuple[JobRecord, ExecutionRecord]]:
        """The executions `where` selects, each with its job, both locked (the job first) and the execution still
        matching `where` once locked; with `skip_locked`, those another transaction holds are left out."""
        found = session.exec(select(ExecutionRecord.id, ExecutionRecord.job_id).where(*where)
                             .order_by(col(ExecutionRecord.job_id), col(ExecutionRecord.id))).all()
        for execution_id, job_id in found:
            job = self._lock_job(session, job_id, skip_locked=skip_locked)
            if job is None:
                continue
            locked = self._lock_executions(session, select(ExecutionRecord).where(
                col(ExecutionRecord.id) == execution_id, *where), skip_locked=skip_locked)
            if locked:
                yield job, locked[0]

    # -- jobs -------------------------------------------------------------------------------------------

    def submit(self, job: Job, *, force: bool = False, actor: str = "") -> JobRecord:
        """Store a validated job and schedule it. A spec whose Name exists in the namespace becomes that job's
        next version (its running executions are stopped); an unchanged spec is refused unless `force`. With an
        `actor`, the audit log records the submission in the same transaction."""
        return self.submit_claiming([job], force=force, actor=actor, batch=False)[0][0]

    def submit_all(self, jobs: list[Job], *, force: bool = False, actor: str = "") -> list[JobRecord]:
        """`submit` for several jobs in one transaction, in their order: all of them are stored, or none (an error
        names the job as `Jobs[i]`). Each is a nanosecond or more younger than the one before: the queue takes
        them in their order."""
        return self.submit_claiming(jobs, force=force, actor=actor)[0]

    def submit_claiming(self, jobs: list[Job], *, force: bool = False, actor: str = "", batch: bool = True,
                        claim_for: Sequence[tuple[str, int, int | None]] = ()) -> tuple[list[JobRecord],
                                                                                          list[list[Claimed]]]:
        """`submit_all` (or, unless `batch`, `submit` of the one job), then, in the same transaction, a claim for
        each waiting poll of `claim_for` (its node, limit and slots), as the poll would claim when woken: the
        poll answers with it, without a transaction of its own. Returns the jobs and each poll's claims."""
        now = now_ns()
        records = []
        with self._tx() as session:
            for index, job in enumerate(jobs):
                now = max(now_ns(), now + 1) if index else now
                try:
                    records.append(self._submit(session, job, force, actor, now))
                except BadRequest as exc:
                    if not batch:
                        raise
                    raise BadRequest(f"Jobs[{index}]: {exc.message}", hint=exc.hint) from None
            direct.insert_later(session)  # the claims read them
            claims = [self._claim_for(session, node_id, limit, slots) for node_id, limit, slots in claim_for]
        return records, claims

    def _claim_for(self, session: Session, node_id: str, limit: int, slots: int | None) -> list[Claimed]:
        try:
            node = self._locked_node(session, node_id)
        except (Unauthorized, Forbidden):  # gone, or rejected, since its poll began: its poll finds out
            return []
        return self._claim(session, node, limit, slots)

    def _submit(self, session: Session, job: Job, force: bool, actor: str, now: int) -> JobRecord:
        spec = job.wire()
        existing = None
        if job.Name:
            direct.insert_later(session)  # the jobs before it in the batch, one of which may have its Name
            existing = session.exec(select(JobRecord).where(
                col(JobRecord.namespace) == job.Namespace, col(JobRecord.name) == job.Name).with_for_update()).first()
        if existing is not None:
            if existing.type != job.Type:
                raise BadRequest(f"Type: job {job.Name} is a {existing.type} job; its type cannot change")
            if existing.spec == spec and not force:
                raise BadRequest("no changes detected for new job spec",
                                 hint="submit it with Force (shoal job run --force) to run it again")
            self._new_version(session, existing, spec, "Job updated", now)
            self._audit_submission(session, actor, existing)
            return existing
        job_id = f"j-{uuid.uuid4()}"
        record = new_record(JobRecord, id=job_id, namespace=job.Namespace, name=job.Name or job_id, type=job.Type,
                            create_time=now, modify_time=now)
        self._set_spec(record, spec | {"Name": record.name})
        # written with SQL Core: the record stays out of the session, and what changes it later writes the same way
        direct.later(session, JOBS, [{column.name: getattr(record, column.name) for column in JOBS.columns}])
        direct.later(session, JOB_VERSIONS, [{"job_id": job_id, "version": 1, "spec": record.spec,
                                              "create_time": now}])
        history.job_event(session, record, Topic.SUBMISSION, "Job submitted", now=now)
        self._schedule(session, record, now)
        self._audit_submission(session, actor, record)
        return record

    @staticmethod
    def _audit_submission(session: Session, actor: str, job: JobRecord) -> None:
        if actor:
            direct.later(session, AUDIT, [audit.entry(actor, "job.submit", job.id, namespace=job.namespace,
                                                      detail=f"version {job.version}")])

    def rerun(self, namespace: str, ref: str, version: int = 0) -> JobRecord:
        """A new version of a job from one of its specs (the latest by default)."""
        job_id = self.find_job(namespace, ref).id
        now = now_ns()
        with self._tx() as session:
            job = self._lock_job(session, job_id)
            if job is None:
                raise NotFound(f"job not found: {ref}")
            if job.state in (JobState.PENDING, JobState.QUEUED):
                raise Conflict(f"job {job.id} is {job.state}: it has not run yet")
            old = session.get(JobVersionRecord, (job.id, version or job.version))
            if old is None:
                raise NotFound(f"job {job.id} has no version {version}")
            self._new_version(session, job, old.spec, f"Job rerun requested (from version {old.version})", now)
        return job

    def versions(self, job_id: str) -> list[JobVersionRecord]:
        with self._read() as session:
            query = select(JobVersionRecord).where(col(JobVersionRecord.job_id) == job_id)
            return list(session.exec(query.order_by(col(JobVersionRecord.version))).all())

    def _set_spec(self, job: JobRecord, spec: dict[str, Any]) -> None:
        task = spec["Tasks"][0]
        timeouts = task.get("Timeouts") or {}
        set_committed_value(job, "spec", spec)  # a mapped value (the version's), not a column: the caller stores it
        job.count = int(spec.get("Count") or 0)
        job.queue_timeout = int(timeouts.get("QueueTimeout") or self.default_queue_timeout)
        job.total_timeout = int(timeouts.get("TotalTimeout") or 0)

    def _new_version(self, session: Session, job: JobRecord, spec: dict[str, Any], message: str, now: int) -> None:
        self._stop_executions(session, job.id, "Execution stop requested because job has been updated", now)
        previous = job.state
        job.version += 1
        self._set_spec(job, spec | {"Name": job.name})
        job.state, job.state_message = JobState.PENDING, ""
        job.create_time = job.modify_time = now  # timeouts count from the new version's submission
        job.revision += 1
        session.add(job)
        direct.later(session, JOB_VERSIONS, [{"job_id": job.id, "version": job.version, "spec": job.spec,
                                             "create_time": now}])
        history.job_event(session, job, Topic.SUBMISSION, message, previous=previous, now=now)
        self._schedule(session, job, now)

    def _schedule(self, session: Session, record: JobRecord, now: int) -> None:
        """Create the job's executions. With no node able to run it, the job fails at once with the reason
        for each node, or waits as Queued when it has a queue timeout."""
        needs = self.needs(record)
        bound = record.type in NODE_BOUND_TYPES
        reasons = self._placement_reasons(session, needs, all_nodes=bound)
        if bound:
            self._place_on_nodes(session, record, needs, reasons, now)
            return
        if record.count == 0:
            self._end_job(session, record, JobState.COMPLETED, "Count is 0: nothing to run", now)
            return
        if not any(not why for why in reasons.values()):
            message = placement.not_enough_nodes(record.count, reasons)
            if not record.queue_timeout:
                self._end_job(session, record, JobState.FAILED, message, now)
                return
            _write(session, sql.QUEUE_JOB, record, {"state": JobState.QUEUED, "state_message": message})
            history.job_event(session, record, Topic.QUEUEING, "Job queued", previous=JobState.PENDING,
                              details={"Reason": message}, now=now)
        direct.later(session, EXECUTIONS, [self._new_execution(record, needs, index, attempt=1, now=now)
                                           for index in range(record.count)])

    def _place_on_nodes(self, session: Session, job: JobRecord, needs: Needs, reasons: dict[str, list[str]],
                        now: int) -> None:
        """ops and daemon jobs: one execution bound to each suitable node. An ops job no node can run fails
        at once; a daemon job waits for nodes to join."""
        suitable = sorted(node for node, why in reasons.items() if not why)
        if not suitable and job.type == JobType.OPS:
            self._end_job(session, job, JobState.FAILED, placement.not_enough_nodes(1, reasons), now)
        if suitable:
            direct.later(session, EXECUTIONS, [self._new_execution(job, needs, 0, attempt=1, now=now,
                                                                   node_id=node_id) for node_id in suitable])

    def _place_daemons(self, session: Session, node: NodeRecord, now: int) -> None:
        """Give a node that joined (or came back) an execution of every daemon job it can run."""
        if node.membership != NodeMembership.APPROVED:
            return
        daemons = session.exec(select(JobRecord).where(
            col(JobRecord.type) == JobType.DAEMON,
            col(JobRecord.state).in_([JobState.PENDING, JobState.QUEUED, JobState.RUNNING]),
        )).all()
        for job in daemons:
            has_one = session.exec(select(ExecutionRecord.id).where(
                col(ExecutionRecord.job_id) == job.id, col(ExecutionRecord.node_id) == node.id,
                col(ExecutionRecord.compute_state).in_([ExecutionState.NEW, *ACTIVE_EXECUTION_STATES]),
            )).first()
            needs = self.needs(job)
            if has_one is None and not placement.unsuitable(node, needs, Resources.from_capacity(node.capacity)):
                direct.insert(session, EXECUTIONS, [self._new_execution(job, needs, 0, attempt=1, now=now,
                                                                        node_id=node.id)])

    @staticmethod
    def _placement_reasons(session: Session, needs: Needs, *, all_nodes: bool = True) -> dict[str, list[str]]:
        """Why each connected, approved node could never run the task (judged on its whole capacity); unless
        `all_nodes`, only up to the first node that could (a node that fits is all scheduling needs to know).
        Worked out once per transaction for each kind of task (no transaction that schedules changes the nodes):
        a batch of like jobs reads the nodes once."""
        known: dict[tuple[str, bool], dict[str, list[str]]] = session.info.setdefault("placements", {})
        key = (repr(needs), all_nodes)
        if key in known:
            return known[key]
        reasons: dict[str, list[str]] = {}
        known[key] = reasons  # filled in below
        page: dict[str, Any] = {"time": -1, "after": ""}  # begins past this node (its creation time and ID)
        while True:  # a page at a time, oldest first: the first that fits often comes first
            nodes = direct.run(session, sql.USABLE_NODES, page)
            for node in nodes:
                reasons[node.id] = placement.unsuitable(node, needs, Resources.from_capacity(node.capacity))
                if not reasons[node.id] and not all_nodes:
                    return reasons
            if len(nodes) < sql.NODES_PER_READ:
                return reasons
            page = {"time": nodes[-1].create_time, "after": nodes[-1].id}

    @staticmethod
    def _new_execution(job: JobRecord | Row[Any], needs: Needs, index: int, *, attempt: int, now: int,
                       node_id: str | None = None) -> dict[str, Any]:
        """A waiting execution's row (the table's defaults fill in the rest), for `direct.insert`."""
        return {
            "id": f"e-{uuid.uuid4()}",
            "node_id": node_id,
            "job_id": job.id,
            "namespace": job.namespace,
            "job_version": job.version,
            "partition_index": index,
            "attempt": attempt,
            "engine": needs.engine,
            "cpu": needs.resources.cpu,
            "memory": int(needs.resources.memory),
            "disk": int(needs.resources.disk),
            "gpu": int(needs.resources.gpu),
            "create_time": now,
            "modify_time": now,
        }

    def named_job(self, namespace: str, name: str) -> JobRecord | None:
        """The job with exactly this Name in the namespace, if any (what a submission with that Name updates)."""
        with self._read() as session:
            return session.exec(select(JobRecord).where(col(JobRecord.namespace) == namespace,
                                                        col(JobRecord.name) == name)).first()

    def find_job(self, namespace: str, ref: str) -> JobRecord:
        """A job by ID, unique ID prefix, or Name within the namespace."""
        with self._read() as session:
            base = select(JobRecord).where(col(JobRecord.namespace) == namespace)
            found = session.exec(base.where(col(JobRecord.id) == ref)).first()
            if found:
                return found
            by_name = session.exec(base.where(col(JobRecord.name) == ref).order_by(col(JobRecord.create_time).desc()))
            found = by_name.first()
            if found:
                return found
            matches = session.exec(base.where(col(JobRecord.id).startswith(ref, autoescape=True)).limit(3)).all()
        if len(matches) > 1:
            raise BadRequest(f"job ID prefix {ref!r} is ambiguous: it matches several jobs; give more characters")
        if not matches:
            raise NotFound(f"job not found: {ref}")
        return matches[0]

    def list_jobs(
        self,
        namespaces: Sequence[str] | None,
        *,
        limit: int,
        offset: int,
        order_by: str = "create_time",
        reverse: bool = False,
        state: str | None = None,
        labels: Sequence[dict[str, Any]] = (),
    ) -> tuple[list[JobRecord], int | None]:
        """One page of the jobs of `namespaces` (None: all), newest first unless `reverse`, whose labels meet
        every requirement in `labels`; returns the page and the offset to continue from (None on the last page)."""
        column = col(JobRecord.id) if order_by == "id" else col(JobRecord.create_time)
        query = select(JobRecord)
        if namespaces is not None:
            query = query.where(col(JobRecord.namespace).in_(list(namespaces)))
        if state:  # named in any case; compared as stored, so that the index on states serves it
            query = query.where(col(JobRecord.state) == _STATES.get(state.lower(), state))
        query = query.order_by(column.asc() if reverse else column.desc(), col(JobRecord.id))
        page: list[JobRecord] = []
        # A label filter drops rows, so read ahead; without one, one row past the page tells whether there is more.
        batch = max(limit * 2, 50) if labels else limit + 1
        with self._read() as session:
            while True:
                rows = list(session.exec(query.offset(offset).limit(batch)).all())
                for index, job in enumerate(rows):
                    if all(placement.matches(r, job.spec.get("Labels") or {}) for r in labels):
                        if len(page) == limit:
                            return page, offset + index
                        page.append(job)
                offset += len(rows)
                if len(rows) < batch:
                    return page, None

    def history(self, job_id: str, *, after: int = 0, limit: int = 100, level: str = "all",
                execution_id: str = "", since_ns: int = 0) -> list[EventRecord]:
        with self._read() as session:
            return history.read(session, job_id, after=after, limit=limit, level=level, execution_id=execution_id,
                                since_ns=since_ns)

    def execution_state(self, execution_id: str) -> str:
        with self._read() as session:
            state = session.exec(select(ExecutionRecord.compute_state).where(
                col(ExecutionRecord.id) == execution_id)).first()
        if state is None:
            raise NotFound(f"execution not found: {execution_id}")
        return state

    def executions(self, job_id: str) -> list[ExecutionRecord]:
        with self._read() as session:
            query = select(ExecutionRecord).where(col(ExecutionRecord.job_id) == job_id)
            order = (col(ExecutionRecord.partition_index), col(ExecutionRecord.attempt))
            return list(session.exec(query.order_by(*order)).all())

    # -- nodes ------------------------------------------------------------------------------------------

    def register_node(self, info: NodeInfo) -> tuple[NodeRecord, str]:
        """A new node and its credential (shown once; only its hash is stored)."""
        credential = NODE_CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        now = now_ns()
        membership = NodeMembership.PENDING if self.manual_approval else NodeMembership.APPROVED
        node = NodeRecord(id=f"n-{uuid.uuid4()}", credential_sha256=_sha256(credential), last_heartbeat=now,
                          create_time=now, membership=membership)
        _apply_info(node, info)
        with self._tx() as session:
            session.add(node)
            self._place_daemons(session, node, now)
        return node, credential

    def authenticate_node(self, credential: str) -> NodeRecord:
        """The node a credential belongs to. A node found is remembered for NODE_CACHE_SECONDS, so that an
        agent's calls do not each read it again: what a remembered node may do is checked where it matters, in
        the calls' own transactions (a poll finds its node's row gone or rejected; a rejected or deleted node's
        executions fail at once, so it can report on none of them)."""
        node = self.remembered_node(credential)
        if node is not None:
            return node
        digest = _sha256(credential)
        with self._read() as session:
            found = session.exec(select(NodeRecord).where(col(NodeRecord.credential_sha256) == digest)).first()
        if found is None:
            raise Unauthorized("unknown node credential; register the agent again")
        self._remember(found)
        return _admitted(found)

    def _remember(self, node: NodeRecord) -> None:
        with self._remembering:
            self._nodes.pop(node.credential_sha256, None)  # to the end: the oldest come first
            self._nodes[node.credential_sha256] = (node, time.monotonic() + NODE_CACHE_SECONDS)
            if len(self._nodes) > NODE_CACHE_SIZE:
                del self._nodes[next(iter(self._nodes))]

    def _forget(self, node: NodeRecord) -> None:
        with self._remembering:
            self._nodes.pop(node.credential_sha256, None)

    def remembered_node(self, credential: str) -> NodeRecord | None:
        """`authenticate_node` without the database: the node if it is remembered, else None."""
        cached = self._nodes.get(_sha256(credential))
        return _admitted(cached[0]) if cached is not None and cached[1] > time.monotonic() else None

    def needs(self, job: JobRecord) -> Needs:
        return self._needs(job.spec)

    def _needs(self, spec: dict[str, Any]) -> Needs:
        return Needs.of(spec, self.default_cpu, self.default_memory)

    def heartbeat(self, node_id: str, info: NodeInfo | None, running: Sequence[str], free_slots: int = 0) -> NodeRecord:
        """Record a poll: node liveness and info, and lease renewal for the executions it still runs."""
        with self._tx() as session:
            return self._heartbeat(session, node_id, info, running, free_slots, now_ns())

    def poll(self, node_id: str, running: Sequence[str], *, limit: int, slots: int | None = None,
             beat: bool = True, info: NodeInfo | None = None,
             free_slots: int = 0) -> tuple[NodeRecord, list[str], list[Claimed]]:
        """What a poll does, in one transaction: the heartbeat (when `beat`), the executions the node should
        stop (`stopped_among`) and the ones it takes now (`claim`). An idle poll that would write nothing but the
        heartbeat's time, while that is recent, only reads (`_quiet`)."""
        if beat and not running and self.heartbeat_ns > 0 and \
                (node := self._quiet(node_id, info, free_slots)) is not None:
            self._remember(node)
            return node, [], []
        with self._tx() as session:
            db = session.connection()
            node = self._heartbeat(session, node_id, info, running, free_slots, now_ns()) if beat else \
                self._locked_node(db, node_id)
            session.flush()  # what the heartbeat changed through the session, written: the reads go to the connection
            cancel = self._stopped_among(db, node_id, running)
            if not beat:  # woken while it waited: the agent may have started executions since (a completion brings
                # them), which `running` does not name; the heartbeat has ended those it does not run otherwise
                cancel = sorted({*cancel, *direct.run(db, sql.TO_STOP_HERE, {"node": node_id}).scalars()})
            claimed = self._claim(session, node, limit, slots)
        self._remember(node)  # as it is now: an agent's next calls need not read it
        return node, cancel, claimed

    def _quiet(self, node_id: str, info: NodeInfo | None, free_slots: int) -> NodeRecord | None:
        """The node, when a poll from it that runs nothing would change nothing: it is connected, says what its row
        says, its heartbeat is younger than `heartbeat_ns`, it has nothing to stop and no execution waits anywhere.
        Else None, and the poll writes. Idle nodes' polls then take no write lock (SQLite has one writer at a time:
        each such poll would hold up submissions and completions), and a node's heartbeat is written at least
        every `heartbeat_ns` plus one long-poll."""
        with self._read() as session:
            db = session.connection()
            found = direct.run(db, sql.NODE_SEEN, {"node": node_id}).first()
            if found is None:
                return None
            node = from_row(NodeRecord, found._mapping)
            if node.connection != NodeConnection.CONNECTED or node.free_slots != free_slots or \
                    now_ns() - node.last_heartbeat >= self.heartbeat_ns:
                return None
            if info is not None:
                told = from_row(NodeRecord, found._mapping)
                _apply_info(told, info)
                if any(getattr(told, name) != getattr(node, name) for name in sql.BEAT_COLUMNS):
                    return None
            if direct.run(db, sql.ANY_WAITING).first() or direct.run(db, sql.TO_STOP_HERE, {"node": node_id}).first():
                return None
        return _admitted(node)

    @staticmethod
    def _locked_node(db: Session | Connection, node_id: str) -> NodeRecord:
        """The node's row, locked: its claims take turns on it."""
        found = direct.run(db, sql.NODE, {"node": node_id}).first()
        if found is None:
            raise Unauthorized("unknown node; register the agent again")
        return _admitted(from_row(NodeRecord, found._mapping))

    def _heartbeat(self, session: Session, node_id: str, info: NodeInfo | None, running: Sequence[str],
                   free_slots: int, now: int) -> NodeRecord:
        db = session.connection()  # the transaction has written nothing through the session yet
        node = self._locked_node(db, node_id)
        returned = node.connection == NodeConnection.DISCONNECTED
        node.last_heartbeat, node.connection, node.free_slots = now, NodeConnection.CONNECTED, free_slots
        if info is not None:
            _apply_info(node, info)
        direct.run(db, sql.BEAT, {"node": node_id} | sql.new({name: getattr(node, name) for name in sql.BEAT_COLUMNS}))
        if returned:
            self._place_daemons(session, node, now)
        if running:
            direct.run(db, sql.RENEW, {"ids": list(running), "node": node_id, "lease": now + self.lease_ns})
        # executions it was told to stop and no longer runs have stopped
        if stopped := direct.run(db, sql.STOPPED_HERE, {"running": list(running), "node": node_id}).scalars().all():
            for execution in self._lock_executions(session, select(ExecutionRecord).where(
                    col(ExecutionRecord.id).in_(stopped), col(ExecutionRecord.node_id) == node_id,
                    col(ExecutionRecord.compute_state).in_(ACTIVE_EXECUTION_STATES),
                    col(ExecutionRecord.desired_state) == DesiredState.STOPPED)):
                self._set_state(session, execution, ExecutionState.CANCELLED, execution.state_message, now=now)
        return node

    def nodes(self) -> list[NodeRecord]:
        with self._read() as session:
            return list(session.exec(select(NodeRecord).order_by(col(NodeRecord.create_time))).all())

    # -- claim and run ----------------------------------------------------------------------------------

    def claim(self, node: NodeRecord, limit: int, *, slots: int | None = None) -> list[Claimed]:
        """Atomically assign up to `limit` waiting executions this node can run now (with `slots`, no more than
        the node's slots its active executions leave free). What the node may take is judged on its row as it is
        now, not on `node`."""
        with self._tx() as session:
            return self._claim(session, self._locked_node(session, node.id), limit, slots)

    def _claim(self, session: Session, node: NodeRecord, limit: int, slots: int | None) -> list[Claimed]:
        """Claims for `node`, whose row the caller has locked and read in this transaction."""
        session.flush()  # what the session holds, written: the claim's statements go to its connection directly
        db = session.connection()
        now = now_ns()
        lease = now + self.lease_ns
        chosen = claim.take(db, node, limit, self._needs, lease=lease, now=now, slots=slots)
        if not chosen:
            return []
        events = [history.event(e.job_id, e.job_version, e.id, Topic.SCHEDULING, f"Requested execution on {node.id}",
                                ExecutionState.NEW, ExecutionState.BID_ACCEPTED, None, now) for e, _ in chosen]
        jobs = {job.id: job for _, job in chosen}
        started: set[str] = set()
        if starting := sorted(job.id for job in jobs.values() if job.state in sql.WAITING_JOB):
            # each still waits as the claim read it (Pending or Queued): a job changes that only with a new version,
            # whose executions the claim would not have taken
            for job_id, version in sorted(direct.run(db, sql.START, {"ids": starting, "now": now})):
                events.append(history.event(job_id, version, "", Topic.STATE_UPDATE, "Running", jobs[job_id].state,
                                            JobState.RUNNING, None, now))
                started.add(job_id)
        history.write(session, events)
        claimed_jobs = {job_id: from_row(JobRecord, job._mapping) for job_id, job in jobs.items()}
        for job_id in started:
            job = claimed_jobs[job_id]
            job.state, job.modify_time, job.revision = JobState.RUNNING, now, job.revision + 1
        return [Claimed(from_row(ExecutionRecord, dict(e._mapping) | {
            "node_id": node.id, "lease_expires": lease, "compute_state": ExecutionState.BID_ACCEPTED,
            "modify_time": now, "revision": e.revision + 1}), claimed_jobs[e.job_id]) for e, _ in chosen]

    def _assigned(self, session: Session, node_id: str, execution_id: str) -> ExecutionRecord:
        # locked, so that an agent's reports on one execution (a late Running, a failure) apply one after another
        # and each sees the state the one before left (PostgreSQL; SQLite has one writer at a time)
        execution = session.get(ExecutionRecord, execution_id, with_for_update=True, populate_existing=True)
        return _checked_assignment(execution, node_id, execution_id)

    def update_status(self, node_id: str, execution_id: str, state: ExecutionState, message: str = "") -> None:
        """An agent says an execution it holds is Running or Publishing; the lease is renewed."""
        now = now_ns()
        with self._tx() as session:
            execution = self._assigned(session, node_id, execution_id)
            execution.lease_expires = now + self.lease_ns
            if execution.compute_state != state:
                self._set_state(session, execution, state, message or str(state), now=now)

    def begin_publish(self, node_id: str, execution_id: str, size: int, sha256: str, prefix: str) -> str:
        """Record the size and digest an agent will upload; returns the object key it may write."""
        now = now_ns()
        with self._tx() as session:
            execution = self._assigned(session, node_id, execution_id)
            key = f"{prefix.strip('/')}/{execution.job_id}/{execution.id}.tar.gz".lstrip("/")
            execution.upload_size, execution.upload_sha256 = size, sha256
            execution.result_key = key
            execution.lease_expires = now + self.lease_ns
            self._set_state(session, execution, ExecutionState.PUBLISHING, "Publishing results",
                            details={"Size": size, "SHA256": sha256}, now=now)
        return key

    @staticmethod
    def _ending(db: Connection, node_id: str, execution_id: str) -> tuple[Row[Any], Row[Any]]:
        """An execution its agent ends, and its job (their rows), both locked (the job first). The ends of one job's
        executions take turns on its row: each then sees the others', so the last partition to complete always ends
        the job."""
        job = direct.run(db, sql.JOB_OF, {"execution": execution_id}).first()
        execution = _checked_assignment(direct.run(db, sql.EXECUTION, {"execution": execution_id}).first(), node_id,
                                        execution_id)
        if job is None:
            raise NotFound(f"execution {execution_id} has no job")
        return job, execution

    def upload_of(self, node_id: str, execution_id: str) -> ExecutionRecord:
        """The execution as the agent left it before completion (for checking its upload)."""
        with self._read() as session:
            return self._assigned(session, node_id, execution_id)

    def complete(self, node_id: str, execution_id: str, outcome: RunOutcome, published: bool,
                 logs: Sequence[Chunk] = (), log_cap: int = 0, *,
                 slots: int | None = None) -> tuple[int, list[Claimed]]:
        """`complete_all` for one execution, which raises (and claims nothing) when the node may not report on it.
        Returns how many of its log characters were kept, and the claims."""
        kept, claimed = self._complete_all(node_id, [Completion(execution_id, outcome, published, logs)], log_cap,
                                           slots, strict=True)
        assert isinstance(kept[0], int)  # strict: a refusal raised
        return kept[0], claimed

    def complete_all(self, node_id: str, completions: Sequence[Completion], log_cap: int = 0, *,
                     slots: int | None = None) -> tuple[list[int | GatewayError], list[Claimed]]:
        """Tasks ran (whatever their exit codes) and their results, if any, are verified in the object store: the
        executions complete, in one transaction. An agent reports short tasks as Running only here: the Running
        state is then recorded at their start time, and their last logs are stored along (up to `log_cap`
        characters for each execution). With `slots` (how many executions the node runs at once), the slots they
        free are filled in the same transaction, as a poll would fill them (`claim`). Returns, in the order of
        `completions`, how many log characters of each were kept, or the error that refused it (an execution the
        node may not report on: not its own, or already ended), and the claims."""
        return self._complete_all(node_id, completions, log_cap, slots, strict=False)

    def _complete_all(self, node_id: str, completions: Sequence[Completion], log_cap: int, slots: int | None, *,
                      strict: bool) -> tuple[list[int | GatewayError], list[Claimed]]:
        now = now_ns()
        results: dict[str, int | GatewayError] = {}
        with self._tx() as session:
            db = session.connection()  # the session holds nothing yet
            # the node's row first, as a poll locks it before the executions it renews: no deadlock between them
            node = self._locked_node(db, node_id) if slots is not None else None
            for completion in _in_lock_order(db, completions):
                session.flush()  # what the completions before left in the session, before reading past it
                try:
                    job, execution = self._ending(db, node_id, completion.execution_id)
                except (NotFound, Conflict) as exc:
                    if strict:
                        raise
                    results[completion.execution_id] = exc
                    continue
                results[completion.execution_id] = self._completed(session, db, job, execution, completion, log_cap,
                                                                   now)
            claimed = self._claim(session, node, slots, slots) if node is not None and slots is not None else []
        return [results[c.execution_id] for c in completions], claimed

    def _completed(self, session: Session, db: Connection, job: Row[Any], execution: Row[Any], completion: Completion,
                   log_cap: int, now: int) -> int:
        """Complete an execution (its row and its job's, both locked; `db` is the session's connection); how many
        of its log characters were kept."""
        execution_id, outcome, published = completion.execution_id, completion.outcome, completion.published
        kept = store_chunks(db, execution_id, completion.logs, log_cap)[0] if completion.logs else 0
        previous, revision, events = execution.compute_state, execution.revision + 1, []
        if previous == ExecutionState.BID_ACCEPTED and outcome.started:
            events.append(history.event(
                job.id, execution.job_version, execution_id, Topic.EXECUTION, str(ExecutionState.RUNNING),
                previous, ExecutionState.RUNNING, None, min(max(outcome.started, execution.modify_time), now)))
            previous, revision = ExecutionState.RUNNING, revision + 1
        stdout, stdout_truncated = _capped(outcome.stdout, outcome.stdout_truncated)
        stderr, stderr_truncated = _capped(outcome.stderr, outcome.stderr_truncated)
        direct.run(db, sql.COMPLETE, {"execution": execution_id} | sql.new({
            "compute_state": ExecutionState.COMPLETED, "state_message": "Completed successfully",
            "exit_code": outcome.exit_code, "stdout": stdout, "stdout_truncated": stdout_truncated,
            "stderr": stderr, "stderr_truncated": stderr_truncated,
            "result_key": execution.result_key if published else None,
            "result_size": execution.upload_size if published else None,
            "result_sha256": execution.upload_sha256 if published else None,
            "lease_expires": None, "modify_time": now, "revision": revision}))
        events.append(history.event(job.id, execution.job_version, execution_id, Topic.EXECUTION,
                                    "Completed successfully", previous, ExecutionState.COMPLETED,
                                    {"ExitCode": outcome.exit_code}, now))
        history.write(session, events)
        if job.type != JobType.SERVICE:
            self._settle_job(session, job, now, completed_one=execution.job_version == job.version)
        elif not JobState(job.state).terminal:
            if execution.attempt < self.max_attempts:
                self._replace(session, job, execution, "a service replica exited", now)
            else:  # a replica that keeps exiting is not a service that runs
                self._end_job(session, job, JobState.FAILED,
                              f"Job failed because a service replica exited {execution.attempt} times", now)
        return kept

    def fail(self, node_id: str, execution_id: str, message: str) -> bool:
        """A system error ended the execution; returns True when it was rescheduled."""
        now = now_ns()
        with self._tx() as session:
            job_row, execution_row = self._ending(session.connection(), node_id, execution_id)
            job, execution = session.get(JobRecord, job_row.id), session.get(ExecutionRecord, execution_row.id)
            assert job is not None and execution is not None  # locked by this transaction
            return self._fail(session, job, execution, message, now)

    def _fail(self, session: Session, job: JobRecord, execution: ExecutionRecord, message: str, now: int) -> bool:
        """Fail an execution (both rows locked by the caller); returns True when it was rescheduled."""
        execution.lease_expires = None
        topic = Topic.EXEC_TIMEOUT if "timed out" in message else Topic.EXECUTION
        self._set_state(session, execution, ExecutionState.FAILED, message[:4096], topic=topic,
                        details={"IsError": True, "FailsExecution": True}, now=now)
        if JobState(job.state).terminal:
            return False
        if job.type in NODE_BOUND_TYPES:  # bound to its node: not retried elsewhere
            self._settle_job(session, job, now)
            return False
        if execution.attempt < self.max_attempts:
            self._replace(session, job, execution, f"attempt {execution.attempt + 1} of {self.max_attempts}", now)
            return True
        self._end_job(
            session, job, JobState.FAILED,
            f"Job failed because it has been retried too many times ({execution.attempt} attempts): {message}",
            now,
        )
        return False

    def _replace(self, session: Session, job: JobRecord | Row[Any], ended: ExecutionRecord | Row[Any], why: str,
                 now: int) -> None:
        retry = self._new_execution(job, self._needs(job.spec), ended.partition_index, attempt=ended.attempt + 1,
                                    now=now)
        direct.insert(session, EXECUTIONS, [retry])
        history.write(session, [history.event(job.id, job.version, retry["id"], Topic.SCHEDULING,
                                              f"Retrying partition {ended.partition_index} ({why})", "",
                                              ExecutionState.NEW, None, now)])

    def _settle_job(self, session: Session, job: JobRecord | Row[Any], now: int, *,
                    completed_one: bool = False) -> None:
        """End the job (as it is now, locked) if its executions are done. `completed_one`: an execution of its
        version has just completed, which is all that a batch job of one partition waits for."""
        if JobState(job.state).terminal:
            return
        if job.type == JobType.OPS:
            states = session.exec(select(ExecutionRecord.compute_state).where(
                col(ExecutionRecord.job_id) == job.id, col(ExecutionRecord.job_version) == job.version)).all()
            if all(ExecutionState(state).terminal for state in states):
                failed = ExecutionState.FAILED in states
                self._end_job(session, job, JobState.FAILED if failed else JobState.COMPLETED,
                              "Job failed because one or more executions failed" if failed else "", now)
            return
        if job.type != JobType.BATCH:
            return  # daemon and service jobs run until they are stopped
        if (completed_one and job.count == 1) or direct.run(
                session, sql.DONE_PARTITIONS, {"job": job.id, "version": job.version}).scalar_one() >= job.count:
            self._end_job(session, job, JobState.COMPLETED, "", now)

    def _end_job(self, session: Session, job: JobRecord | Row[Any], state: JobState, message: str, now: int,
                 topic: Topic = Topic.STATE_UPDATE) -> None:
        """End the job (its row, or its record in the session, which is brought up to date)."""
        previous = job.state
        _write(session, sql.END_JOB, job, {"state": state, "state_message": message, "modify_time": now,
                                           "revision": job.revision + 1})
        event = {JobState.STOPPED: message, JobState.COMPLETED: "Job completed"}.get(state, message)
        history.write(session, [history.event(job.id, job.version, "", topic, event, previous, state,
                                              {"IsError": True} if state == JobState.FAILED else None, now)])
        why = "Execution stop requested because job " + {
            JobState.STOPPED: "has been stopped", JobState.FAILED: "has failed"}.get(state, f"is {state}")
        self._stop_executions(session, job.id, why, now)

    def _stop_executions(self, session: Session, job_id: str, why: str, now: int) -> None:
        if not direct.run(session, sql.UNFINISHED, {"job": job_id}).first():  # as a job ends, often none: a cheap look
            return
        unfinished = self._lock_executions(session, select(ExecutionRecord).where(
            col(ExecutionRecord.job_id) == job_id,
            col(ExecutionRecord.compute_state).in_([ExecutionState.NEW, *ACTIVE_EXECUTION_STATES]),
        ))
        for execution in unfinished:
            execution.desired_state = DesiredState.STOPPED
            # waiting executions end here; running ones when their agent has stopped them
            ended = ExecutionState.CANCELLED if execution.compute_state == ExecutionState.NEW else None
            self._set_state(session, execution, ended or ExecutionState(execution.compute_state), why, now=now)

    def stop_job(self, namespace: str, ref: str, reason: str = "") -> JobRecord:
        """Stop a job: waiting executions are cancelled, running ones are cancelled on their agents.
        Stopping a stopped job changes nothing; a completed job cannot be stopped."""
        job_id = self.find_job(namespace, ref).id
        with self._tx() as session:
            job = self._lock_job(session, job_id)
            if job is None:
                raise NotFound(f"job not found: {ref}")
            if job.state == JobState.COMPLETED:
                raise Conflict(f"job {job.id} is Completed: a completed job cannot be stopped")
            if job.state != JobState.STOPPED:
                self._end_job(session, job, JobState.STOPPED, reason or "Job requested to stop before completion",
                              now_ns())
        return job

    @staticmethod
    def _set_state(session: Session, execution: ExecutionRecord, state: ExecutionState, message: str, *,
                   topic: Topic = Topic.EXECUTION, details: dict[str, Any] | None = None, now: int) -> None:
        """Change an execution's state (or only its message) and record it in the job's history."""
        previous = execution.compute_state
        execution.compute_state, execution.state_message = state, message
        execution.modify_time, execution.revision = now, execution.revision + 1
        session.add(execution)
        history.execution_event(session, execution, topic, message, previous=previous, details=details, now=now)

    # -- housekeeping -----------------------------------------------------------------------------------

    def expire_leases(self) -> int:
        """Fail executions whose agent stopped renewing their lease; returns how many were rescheduled."""
        now = now_ns()
        rescheduled = 0
        with self._tx() as session:
            expired = (col(ExecutionRecord.compute_state).in_(ACTIVE_EXECUTION_STATES),
                       col(ExecutionRecord.lease_expires) < now)
            # what another transaction holds is left for the next sweep
            for job, execution in self._each_locked(session, expired, skip_locked=True):
                execution.lease_expires = None
                if execution.desired_state == DesiredState.STOPPED:
                    self._set_state(session, execution, ExecutionState.CANCELLED, execution.state_message, now=now)
                    continue
                message = f"lease expired: node {execution.node_id} stopped reporting on this execution"
                rescheduled += self._fail(session, job, execution, message, now)
        return rescheduled

    def expire_jobs(self) -> int:
        """Fail jobs past their TotalTimeout, and jobs that waited for a node longer than their QueueTimeout."""
        now = now_ns()
        ended = 0
        with self._tx() as session:
            waiting = session.exec(select(JobRecord).where(
                col(JobRecord.state).in_([JobState.PENDING, JobState.QUEUED, JobState.RUNNING]),
                (col(JobRecord.total_timeout) > 0) | (col(JobRecord.queue_timeout) > 0),
            ).with_for_update(skip_locked=True)).all()
            for job in waiting:
                age = (now - job.create_time) / 1e9
                if job.total_timeout and age > job.total_timeout:
                    self._end_job(session, job, JobState.FAILED, f"Job timed out after {job.total_timeout}s", now,
                                  topic=Topic.JOB_TIMEOUT)
                elif job.queue_timeout and age > job.queue_timeout and job.state != JobState.RUNNING:
                    reasons = self._placement_reasons(session, self.needs(job))
                    message = placement.not_enough_nodes(job.count, reasons)
                    self._end_job(session, job, JobState.FAILED,
                                  f"Job waited longer than its queue timeout ({job.queue_timeout}s): {message}", now,
                                  topic=Topic.QUEUEING)
                else:
                    continue
                ended += 1
        return ended

    def disconnect_silent_nodes(self, silence_seconds: float) -> int:
        """Nodes silent for too long become DISCONNECTED; their executions fail and are rescheduled.
        Returns how many executions were rescheduled."""
        now = now_ns()
        cutoff = now - int(silence_seconds * 1e9)
        rescheduled = 0
        with self._tx() as session:
            silent = session.exec(select(NodeRecord).where(
                col(NodeRecord.connection) == NodeConnection.CONNECTED, col(NodeRecord.last_heartbeat) < cutoff,
            ).with_for_update(skip_locked=True)).all()
            for node in silent:
                node.connection = NodeConnection.DISCONNECTED
                session.add(node)
                rescheduled += self._fail_node_executions(
                    session, node.id, f"node {node.id} disconnected: no heartbeat for {silence_seconds:g}s", now)
        return rescheduled

    def _fail_node_executions(self, session: Session, node_id: str, message: str, now: int) -> int:
        mine = (col(ExecutionRecord.node_id) == node_id,
                col(ExecutionRecord.compute_state).in_(ACTIVE_EXECUTION_STATES))
        locked = self._each_locked(session, mine)  # those completed meanwhile no longer match
        return sum(self._fail(session, job, execution, message, now) for job, execution in locked)

    def find_node(self, ref: str) -> NodeRecord:
        """A node by ID or unique ID prefix."""
        with self._read() as session:
            found = session.get(NodeRecord, ref)
            if found:
                return found
            matches = session.exec(
                select(NodeRecord).where(col(NodeRecord.id).startswith(ref, autoescape=True)).limit(3)).all()
        if len(matches) > 1:
            raise BadRequest(f"node ID prefix {ref!r} is ambiguous: it matches several nodes; give more characters")
        if not matches:
            raise NotFound(f"node not found: {ref}")
        return matches[0]

    def set_membership(self, ref: str, membership: NodeMembership) -> tuple[NodeRecord, int]:
        """Approve or reject a node; a rejected node's executions fail and are rescheduled elsewhere."""
        node_id = self.find_node(ref).id
        now = now_ns()
        with self._tx() as session:
            node = session.get(NodeRecord, node_id)
            if node is None:
                raise NotFound(f"node not found: {ref}")
            node.membership = membership
            session.add(node)
            self._forget(node)
            self._place_daemons(session, node, now)
            rescheduled = 0
            if membership == NodeMembership.REJECTED:
                rescheduled = self._fail_node_executions(session, node.id, f"node {node.id} has been rejected", now)
        return node, rescheduled

    def delete_node(self, ref: str) -> int:
        """Forget a node (its credential stops working); its executions fail and are rescheduled."""
        node_id = self.find_node(ref).id
        with self._tx() as session:
            node = session.get(NodeRecord, node_id)
            if node is None:
                raise NotFound(f"node not found: {ref}")
            rescheduled = self._fail_node_executions(session, node.id, f"node {node.id} has been deleted", now_ns())
            session.delete(node)
            self._forget(node)
        return rescheduled

    def stopped_among(self, node_id: str, running: Sequence[str]) -> list[str]:
        """Which of the executions an agent runs it should stop: stopped, ended (but not completed by the agent
        itself), or no longer its own."""
        if not running:
            return []
        with self._read() as session:
            return self._stopped_among(session, node_id, running)

    @staticmethod
    def _stopped_among(db: Session | Connection, node_id: str, running: Sequence[str]) -> list[str]:
        if not running:
            return []
        found = {row.id: row for row in direct.run(db, sql.RUNNING_HERE, {"running": list(running), "node": node_id})}

        def runs_on(execution_id: str) -> bool:  # or it completed here: the agent has already let it go
            row = found.get(execution_id)
            return row is not None and (row.compute_state == ExecutionState.COMPLETED or (
                row.desired_state != DesiredState.STOPPED and row.compute_state in ACTIVE_EXECUTION_STATES))

        return sorted({execution_id for execution_id in running if not runs_on(execution_id)})


_STATES = {state.lower(): state.value for state in JobState}


def _apply_info(node: NodeRecord, info: NodeInfo) -> None:
    node.name = info.name or node.name
    node.labels = dict(info.labels or {})
    node.engines = sorted(set(info.engines))
    node.publishers = sorted(set(info.publishers))
    node.storage_sources = sorted(set(info.storage_sources))
    node.capacity = dict(info.capacity or {})
    node.version = info.version or node.version


def _admitted(node: NodeRecord) -> NodeRecord:
    if node.membership == NodeMembership.REJECTED:
        raise Forbidden(f"node {node.id} has been rejected")
    return node


def _write(session: Session, statement: Any, job: JobRecord | Row[Any], values: dict[str, Any]) -> None:
    """Set `values` on a job with an UPDATE (`statement`, of `sql.setting`) and on its record, if it is one (as
    written: the session does not write them again). A job just stored is inserted first."""
    direct.insert_later(session)
    direct.run(session, statement, {"job": job.id} | sql.new(values))
    if isinstance(job, JobRecord):
        for name, value in values.items():
            set_committed_value(job, name, value)


def _checked_assignment(execution: Any, node_id: str, execution_id: str) -> Any:
    """The execution (its record or row) if the node may report on it now."""
    if execution is None or execution.node_id != node_id:
        raise NotFound(f"execution {execution_id} is not assigned to this node")
    if execution.compute_state not in ACTIVE_EXECUTION_STATES:
        raise Conflict(f"execution {execution_id} is {execution.compute_state}: it may not be updated")
    return execution


def _in_lock_order(db: Connection, completions: Sequence[Completion]) -> list[Completion]:
    """Completions in the order their jobs' rows are locked: by job, then execution (as `Store._each_locked`), so
    that two transactions ending executions of the same jobs never wait on each other (PostgreSQL; SQLite has one
    writer at a time)."""
    if len(completions) < 2 or db.dialect.name == "sqlite":
        return list(completions)
    jobs = {row.id: row.job_id for row in direct.run(db, sql.JOBS_OF, {"ids": [c.execution_id for c in completions]})}
    return sorted(completions, key=lambda c: (jobs.get(c.execution_id, ""), c.execution_id))


def _capped(text: str, truncated: bool) -> tuple[str, bool]:
    if len(text) > OUTPUT_CAP:
        return text[:OUTPUT_CAP], True
    return text, truncated
