"""Job history: what happened to a job and its executions, in order, with Bacalhau's topics and messages.

Events are written in the same transaction as the change they describe: queued in the order of the changes as
they happen (`write`), and inserted together as the transaction ends (`flush`, one SQL Core INSERT for all of a
transaction's events), so that their sequence numbers follow the order of the changes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlmodel import Session, col, select

from gateway import direct
from gateway.models import EVENTS, EventRecord, ExecutionRecord, JobRecord

_PENDING = "shoal_history_events"  # in Session.info


class Topic(StrEnum):
    SUBMISSION = "Submission"
    STATE_UPDATE = "State Update"
    SCHEDULING = "Scheduling"
    QUEUEING = "Queueing"
    EXEC_TIMEOUT = "Exec Timeout"
    JOB_TIMEOUT = "Job Timeout"
    EXECUTION = "Execution"


def job_event(session: Session, job: JobRecord, topic: Topic, message: str, *, previous: str = "",
              details: dict[str, Any] | None = None, now: int) -> None:
    write(session, [event(job.id, job.version, "", topic, message, previous, job.state, details, now)])


def execution_event(session: Session, execution: ExecutionRecord, topic: Topic, message: str, *,
                    previous: str = "", details: dict[str, Any] | None = None, now: int) -> None:
    write(session, [event(execution.job_id, execution.job_version, execution.id, topic, message, previous,
                          execution.compute_state, details, now)])


def event(job_id: str, version: int, execution_id: str, topic: Topic, message: str, previous: str, new: str,
          details: dict[str, Any] | None, now: int) -> dict[str, Any]:
    """One event's row (`execution_id` empty for a job-level event), for `write`."""
    return {"job_id": job_id, "job_version": version, "execution_id": execution_id, "topic": topic,
            "message": message, "previous_state": previous, "new_state": new, "details": details or {}, "time": now}


def write(session: Session, events: list[dict[str, Any]]) -> None:
    """Queue `events` (rows from `event`) to be inserted at the end of the session's transaction."""
    session.info.setdefault(_PENDING, []).extend(events)


def flush(session: Session) -> None:
    """Insert the events the transaction has queued, in one statement (the transaction ends next)."""
    if pending := session.info.pop(_PENDING, None):
        direct.insert(session, EVENTS, pending)


def read(session: Session, job_id: str, *, after: int, limit: int, level: str = "all",
         execution_id: str = "", since_ns: int = 0) -> list[EventRecord]:
    """Events after sequence number `after`, oldest first; `level` is all, job or execution."""
    query = select(EventRecord).where(col(EventRecord.job_id) == job_id, col(EventRecord.seq) > after)
    if level == "job":
        query = query.where(col(EventRecord.execution_id) == "")
    elif level == "execution":
        query = query.where(col(EventRecord.execution_id) != "")
    if execution_id:
        query = query.where(col(EventRecord.execution_id) == execution_id)
    if since_ns:
        query = query.where(col(EventRecord.time) >= since_ns)
    return list(session.exec(query.order_by(col(EventRecord.seq)).limit(limit)).all())


def wire(event: EventRecord) -> dict[str, Any]:
    """Bacalhau's `JobHistory` shape."""
    level = "ExecutionLevel" if event.execution_id else "JobLevel"
    states = {"Previous": event.previous_state, "New": event.new_state}
    return {
        "SeqNum": event.seq,
        "Type": level,
        "JobID": event.job_id,
        "JobVersion": event.job_version,
        "ExecutionID": event.execution_id,
        "Event": {"Message": event.message, "Topic": event.topic, "Timestamp": event.time, "Details": event.details},
        "Time": event.time,
        "JobState": None if event.execution_id else states,
        "ExecutionState": states if event.execution_id else None,
    }
