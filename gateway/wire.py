"""Records as Bacalhau's API writes them (PascalCase; states as strings, times in Unix nanoseconds)."""

from __future__ import annotations

from typing import Any

from gateway.models import ExecutionRecord, JobRecord, NodeRecord
from gateway.redaction import redact_spec


def job(record: JobRecord) -> dict[str, Any]:
    return redact_spec(record.spec) | {
        "ID": record.id,
        "Name": record.name,
        "Namespace": record.namespace,
        "Type": record.type,
        "Count": record.count,
        "State": {"StateType": record.state, "Message": record.state_message},
        "Version": record.version,
        "Revision": record.revision,
        "CreateTime": record.create_time,
        "ModifyTime": record.modify_time,
    }


def execution(record: ExecutionRecord) -> dict[str, Any]:
    published = None
    if record.result_size is not None:
        published = {"Type": "s3managed", "Params": {"JobID": record.job_id, "ExecutionID": record.id}}
    return {
        "ID": record.id,
        "Namespace": record.namespace,
        "JobID": record.job_id,
        "JobVersion": record.job_version,
        "NodeID": record.node_id or "",
        "PartitionIndex": record.partition_index,
        "Attempt": record.attempt,
        "DesiredState": {"StateType": record.desired_state, "Message": ""},
        "ComputeState": {"StateType": record.compute_state, "Message": record.state_message},
        "RunOutput": None if record.exit_code is None else {
            "Stdout": record.stdout,
            "StdoutTruncated": record.stdout_truncated,
            "stderr": record.stderr,
            "StderrTruncated": record.stderr_truncated,
            "ExitCode": record.exit_code,
            "ErrorMsg": "",
        },
        "PublishedResult": published,
        "Revision": record.revision,
        "CreateTime": record.create_time,
        "ModifyTime": record.modify_time,
    }


def node(record: NodeRecord) -> dict[str, Any]:
    return {
        "Info": {
            "NodeID": record.id,
            "Name": record.name,
            "NodeType": "Compute",
            "Labels": record.labels,
            "BacalhauVersion": {"GitVersion": record.version},
            "ComputeNodeInfo": {
                "ExecutionEngines": record.engines,
                "Publishers": record.publishers,
                "StorageSources": record.storage_sources,
                "MaxCapacity": record.capacity,
            },
        },
        "Membership": record.membership,
        "Connection": record.connection,
        "ConnectionState": {"Status": record.connection, "LastHeartbeat": record.last_heartbeat,
                            "ConnectedSince": record.create_time},
    }
