"""Tables. States are `str` enums stored as their names; times are Unix nanoseconds (UTC)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic_core import PydanticUndefined
from sqlalchemy import JSON, BigInteger, Column, Index, Table, Text, inspect, select
from sqlalchemy.orm import column_property, configure_mappers
from sqlmodel import Field, SQLModel


class JobState(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.STOPPED)


class DesiredState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    STOPPED = "Stopped"


class ExecutionState(StrEnum):
    NEW = "New"
    BID_ACCEPTED = "BidAccepted"
    RUNNING = "Running"
    PUBLISHING = "Publishing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED)


ACTIVE_EXECUTION_STATES = (ExecutionState.BID_ACCEPTED, ExecutionState.RUNNING, ExecutionState.PUBLISHING)


class NodeMembership(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class NodeConnection(StrEnum):
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"


class JobRecord(SQLModel, table=True):
    """A job as it is now. Its spec is its current version's (`JobVersionRecord`), read along with the job
    (`JOB_SPEC`) and set as if loaded (`Store._set_spec`): the spec (a module sent inline makes it tens of KB) is
    stored once, and the job's row, which every change of its state rewrites, stays small."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_namespace_name", "namespace", "name"),
                      Index("ix_jobs_state", "namespace", "state", "create_time", "id"))  # lists by state

    id: str = Field(primary_key=True)
    namespace: str
    name: str
    type: str
    state: str = JobState.PENDING
    state_message: str = ""
    version: int = 1
    revision: int = 1
    count: int = 1
    queue_timeout: int = 0
    total_timeout: int = 0
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    modify_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    if TYPE_CHECKING:
        spec: dict[str, Any]  # mapped below, from job_versions


class ExecutionRecord(SQLModel, table=True):
    __tablename__ = "executions"
    __table_args__ = (
        # a claim's order (gateway/claim.py): per state and engine, oldest first, a job's partitions together
        Index("ix_executions_waiting", "compute_state", "engine", "create_time", "job_id", "partition_index", "id"),
        Index("ix_executions_job", "job_id", "partition_index"),
        Index("ix_executions_node", "node_id", "compute_state"),
    )

    id: str = Field(primary_key=True)
    job_id: str
    namespace: str
    job_version: int = 1
    partition_index: int = 0
    attempt: int = 1
    engine: str
    cpu: float = 0.0
    memory: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    disk: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    gpu: int = 0
    node_id: str | None = None
    desired_state: str = DesiredState.RUNNING
    compute_state: str = ExecutionState.NEW
    state_message: str = ""
    lease_expires: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    exit_code: int | None = None
    stdout: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    stderr: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    upload_size: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    upload_sha256: str | None = None
    result_key: str | None = None
    result_size: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    result_sha256: str | None = None
    revision: int = 1
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    modify_time: int = Field(sa_column=Column(BigInteger, nullable=False))


class NodeRecord(SQLModel, table=True):
    __tablename__ = "nodes"
    __table_args__ = (Index("ix_nodes_age", "create_time", "id"),)  # scheduling pages through them, oldest first

    id: str = Field(primary_key=True)
    credential_sha256: str = Field(index=True)
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    engines: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    publishers: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    storage_sources: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    capacity: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: str = ""
    membership: str = NodeMembership.APPROVED
    free_slots: int = 0
    connection: str = NodeConnection.CONNECTED
    last_heartbeat: int = Field(sa_column=Column(BigInteger, nullable=False))
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))


class EventRecord(SQLModel, table=True):
    """One entry of a job's history: a job-level or an execution-level event."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job", "job_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    job_id: str
    job_version: int = 1
    execution_id: str = ""
    topic: str
    message: str
    previous_state: str = ""
    new_state: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    time: int = Field(sa_column=Column(BigInteger, nullable=False))


class JobVersionRecord(SQLModel, table=True):
    """Every spec a job has had: submitting a spec under an existing Name makes a new version."""

    __tablename__ = "job_versions"

    job_id: str = Field(primary_key=True)
    version: int = Field(primary_key=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))


class LogChunkRecord(SQLModel, table=True):
    """A piece of an execution's stdout or stderr, shipped by its agent while the task runs."""

    __tablename__ = "log_chunks"
    __table_args__ = (Index("ix_log_chunks_execution", "execution_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    execution_id: str
    stream: str  # stdout | stderr
    offset: int = Field(sa_column=Column(BigInteger, nullable=False))
    data: str = Field(sa_column=Column(Text, nullable=False))
    time: int = Field(sa_column=Column(BigInteger, nullable=False))


class TokenRecord(SQLModel, table=True):
    """A scoped API token for CI/CD; only the SHA-256 of its secret is kept."""

    __tablename__ = "tokens"

    id: str = Field(primary_key=True)
    name: str
    secret_sha256: str = Field(index=True, unique=True)
    prefix: str  # the secret's first characters, to recognise it in lists
    capabilities: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    namespace: str
    created_by: str
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    expire_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoke_time: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_used: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class JoinTokenRecord(SQLModel, table=True):
    """An expiring token that lets compute nodes register; only the SHA-256 of its secret is kept."""

    __tablename__ = "join_tokens"

    id: str = Field(primary_key=True)
    secret_sha256: str = Field(index=True, unique=True)
    created_by: str
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    expire_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    nodes_joined: int = 0


class AuditRecord(SQLModel, table=True):
    """Who did what to which object, and when."""

    __tablename__ = "audit"

    seq: int | None = Field(default=None, primary_key=True)
    time: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    actor: str = Field(index=True)
    action: str = Field(index=True)
    target: str
    namespace: str = ""
    detail: str = ""


R = TypeVar("R", bound=SQLModel)


def from_row(model: type[R], values: Mapping[Any, Any]) -> R:
    """A record (not in any session) holding a row's values, made the way SQLAlchemy makes the records it loads:
    SQLModel's own constructor sets every field through the ORM's instrumentation, which cost about 30 times as
    much (some 200 against 7 µs for an execution), three times in every completion that claims."""
    record: R = inspect(model).class_manager.new_instance()
    record.__dict__.update(values)
    return record


def new_record(model: type[R], **values: Any) -> R:
    """`from_row` for a record not stored yet: the model's defaults, and `values`."""
    return from_row(model, _defaults(model) | values)


@functools.cache
def _defaults(model: type[SQLModel]) -> dict[str, Any]:
    return {name: field.default for name, field in model.model_fields.items() if field.default is not PydanticUndefined}


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


# The tables themselves, for SQL Core statements on the hot paths (claims, completions, history), where the ORM's
# unit of work would cost more than the statements.
JOBS = _table(JobRecord)
EXECUTIONS = _table(ExecutionRecord)
NODES = _table(NodeRecord)
EVENTS = _table(EventRecord)
LOG_CHUNKS = _table(LogChunkRecord)
JOB_VERSIONS = _table(JobVersionRecord)
AUDIT = _table(AuditRecord)

# A job's spec: its current version's, selected along with the job's columns wherever a job is read
JOB_SPEC = (select(JOB_VERSIONS.c.spec)
            .where(JOB_VERSIONS.c.job_id == JOBS.c.id, JOB_VERSIONS.c.version == JOBS.c.version)
            .correlate_except(JOB_VERSIONS).scalar_subquery().label("spec"))
JobRecord.__mapper__.add_property("spec", column_property(JOB_SPEC, expire_on_flush=False))  # type: ignore[attr-defined]
configure_mappers()  # now, not at the first query: `from_row` makes records without one
