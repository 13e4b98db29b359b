"""SQL Core statements for the store's hot paths (polls, claims, completions, scheduling), built once with bound
parameters: building a statement, or the ORM's unit of work, costs more than running it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select, tuple_, update

from gateway.models import (
    ACTIVE_EXECUTION_STATES,
    EXECUTIONS,
    JOB_SPEC,
    JOBS,
    NODES,
    DesiredState,
    ExecutionState,
    JobState,
    NodeConnection,
    NodeMembership,
)

NODES_PER_READ = 16  # nodes read at a time when scheduling looks for one that fits


def setting(*columns: str) -> dict[str, Any]:
    """An UPDATE's SET clause for `columns`, whose values are the parameters `new_<column>` (see `new`)."""
    return {name: bindparam(f"new_{name}") for name in columns}


def new(values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a `setting` clause."""
    return {f"new_{name}": value for name, value in values.items()}


NODE_SEEN = select(NODES).where(NODES.c.id == bindparam("node"))  # read only
ANY_WAITING = select(EXECUTIONS.c.id).where(EXECUTIONS.c.compute_state == ExecutionState.NEW).limit(1)
# rows read and locked (FOR UPDATE on PostgreSQL; SQLite's transaction holds the write lock already)
NODE = NODE_SEEN.with_for_update()
JOB_OF = select(JOBS, JOB_SPEC).where(JOBS.c.id == select(EXECUTIONS.c.job_id).where(
    EXECUTIONS.c.id == bindparam("execution")).scalar_subquery()).with_for_update()  # an execution's job
JOBS_OF = select(EXECUTIONS.c.id, EXECUTIONS.c.job_id).where(EXECUTIONS.c.id.in_(bindparam("ids", expanding=True)))
EXECUTION = select(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("execution")).with_for_update()
QUEUE_JOB = update(JOBS).where(JOBS.c.id == bindparam("job")).values(setting("state", "state_message"))
END_JOB = update(JOBS).where(JOBS.c.id == bindparam("job")).values(
    setting("state", "state_message", "modify_time", "revision"))
COMPLETE = update(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("execution")).values(setting(
    "compute_state", "state_message", "exit_code", "stdout", "stdout_truncated", "stderr", "stderr_truncated",
    "result_key", "result_size", "result_sha256", "lease_expires", "modify_time", "revision"))

BEAT_COLUMNS = ("last_heartbeat", "connection", "free_slots", "name", "labels", "engines", "publishers",
                 "storage_sources", "capacity", "version")
BEAT = update(NODES).where(NODES.c.id == bindparam("node")).values(setting(*BEAT_COLUMNS))
ACTIVE_HERE = (EXECUTIONS.c.node_id == bindparam("node"), EXECUTIONS.c.compute_state.in_(ACTIVE_EXECUTION_STATES))
RENEW = update(EXECUTIONS).where(EXECUTIONS.c.id.in_(bindparam("ids", expanding=True)), *ACTIVE_HERE).values(
    lease_expires=bindparam("lease"))
TO_STOP_HERE = select(EXECUTIONS.c.id).where(*ACTIVE_HERE, EXECUTIONS.c.desired_state == DesiredState.STOPPED)
# executions the node was told to stop and no longer runs
STOPPED_HERE = TO_STOP_HERE.where(EXECUTIONS.c.id.not_in(bindparam("running", expanding=True)))
RUNNING_HERE = select(EXECUTIONS.c.id, EXECUTIONS.c.desired_state, EXECUTIONS.c.compute_state).where(
    EXECUTIONS.c.id.in_(bindparam("running", expanding=True)), EXECUTIONS.c.node_id == bindparam("node"))
USABLE_NODES = select(NODES).where(  # a page of them, oldest first, after the node (`time`, `after`): keyset paging
    NODES.c.membership == NodeMembership.APPROVED, NODES.c.connection == NodeConnection.CONNECTED,
    tuple_(NODES.c.create_time, NODES.c.id) > tuple_(bindparam("time"), bindparam("after")),
).order_by(NODES.c.create_time, NODES.c.id).limit(NODES_PER_READ)
DONE_PARTITIONS = select(func.count(func.distinct(EXECUTIONS.c.partition_index))).where(
    EXECUTIONS.c.job_id == bindparam("job"), EXECUTIONS.c.job_version == bindparam("version"),
    EXECUTIONS.c.compute_state == ExecutionState.COMPLETED)
UNFINISHED = select(EXECUTIONS.c.id).where(
    EXECUTIONS.c.job_id == bindparam("job"),
    EXECUTIONS.c.compute_state.in_([ExecutionState.NEW, *ACTIVE_EXECUTION_STATES]))
WAITING_JOB = (JobState.PENDING, JobState.QUEUED)
# an execution claimed: its node (`claimer`), its lease's end (`lease`) and the time (`now`)
CLAIMED = {"node_id": bindparam("claimer"), "lease_expires": bindparam("lease"),
           "compute_state": ExecutionState.BID_ACCEPTED, "modify_time": bindparam("now"),
           "revision": EXECUTIONS.c.revision + 1}
CLAIM = update(EXECUTIONS).where(EXECUTIONS.c.id.in_(bindparam("ids", expanding=True))).values(CLAIMED)
# the jobs of claimed executions that have not started, started (one locked elsewhere is being stopped, or started by
# another claim: it needs nothing from this one); returns those it started
START = update(JOBS).where(JOBS.c.id.in_(
    select(JOBS.c.id).where(JOBS.c.id.in_(bindparam("ids", expanding=True)), JOBS.c.state.in_(WAITING_JOB))
    .with_for_update(skip_locked=True),
)).values(state=JobState.RUNNING, modify_time=bindparam("now"), revision=JOBS.c.revision + 1).returning(
    JOBS.c.id, JOBS.c.version)
