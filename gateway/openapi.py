"""The gateway's OpenAPI description, served at `GET /api/v1/openapi.json`.

Written by hand, to say what the handlers actually do: the parameters and limits they enforce, the shapes
`gateway.wire` writes, and the errors they raise (each in Bacalhau's shape, `{Status, Message, Code,
RequestID, Hint?}`, with the request's ID also in the `X-Request-ID` header). `tests/gateway/test_openapi.py`
checks that every route is described and fuzzes the live gateway against this document.

Adding an operation is a few lines in one of the functions `_paths()` calls (or in a new one added there):

    _op(paths, "GET", "/api/v1/things/{id}", "Describe a thing", "Things", "getThing",
        params=[_path("id", "The thing's ID")],
        responses={"200": _json("The thing", _obj({"Thing": _ref("Thing")}, required=["Thing"]))},
        errors=(400, 404))

User routes also get the errors of authentication (`_AUTH_ERRORS`) unless `open_route=True`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.jobs_api import MAX_BATCH
from gateway.models import DesiredState, ExecutionState, JobState, NodeConnection, NodeMembership
from gateway.responses import JSONResponse
from shoal import __version__
from shoal.spec import MAX_COUNT, EngineType, JobType, PartitionType, PublisherType, SourceType

Schema = dict[str, Any]

OPENAPI_PATH = "/api/v1/openapi.json"
JOBS = "/api/v1/orchestrator/jobs"
NODES = "/api/v1/orchestrator/nodes"
COMPUTE = "/api/v1/compute"

# -- schema helpers ---------------------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], *, required: list[str] | None = None, description: str = "") -> Schema:
    """A JSON object; other keys are allowed (requests: ignored; answers: may grow)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


def _str(description: str = "", **more: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **more}


def _int(description: str = "", **more: Any) -> Schema:
    return {"type": "integer", **({"description": description} if description else {}), **more}


def _num(description: str = "", **more: Any) -> Schema:
    return {"type": "number", **({"description": description} if description else {}), **more}


def _bool(description: str = "") -> Schema:
    return {"type": "boolean", **({"description": description} if description else {})}


def _array(items: Schema, description: str = "", **more: Any) -> Schema:
    return {"type": "array", "items": items, **({"description": description} if description else {}), **more}


def _strings(description: str = "") -> Schema:
    return _array({"type": "string"}, description)


def _string_map(description: str = "") -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"},
            **({"description": description} if description else {})}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _enum(values: Any, description: str = "") -> Schema:
    return _str(description, enum=[str(v) for v in values])


def _nanos(description: str) -> Schema:
    return _int(f"{description} (Unix nanoseconds)", format="int64")


def _page(items: Schema, description: str = "") -> Schema:
    return _obj({"Items": _array(items), "NextToken": _str("Empty on the last page")},
                required=["Items", "NextToken"], description=description)


# -- operation helpers ------------------------------------------------------------------------------------

_HEADERS = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
_ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                413: "PayloadTooLarge", 429: "TooManyRequests"}
_AUTH_ERRORS = (401, 403, 429)  # AuthMiddleware: bad credentials, a missing capability, too many failures
_NODE_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _json(description: str, schema: Schema, *, headers: dict[str, Any] | None = None) -> Schema:
    """A JSON response."""
    return {"description": description, "headers": {**_HEADERS, **(headers or {})},
            "content": {"application/json": {"schema": schema}}}


def _empty(description: str, *, headers: dict[str, Any] | None = None) -> Schema:
    """A response without a body."""
    return {"description": description, "headers": {**_HEADERS, **(headers or {})}}


def _body(schema: Schema, *, description: str = "", required: bool = False, example: Any = None,
          media_types: tuple[str, ...] = ("application/json",)) -> Schema:
    """A request body; the handlers read an empty body as `{}`, so most are optional."""
    content: Schema = {}
    for media_type in media_types:
        content[media_type] = {"schema": schema, **({"example": example} if example is not None else {})}
    return {"required": required, "content": content, **({"description": description} if description else {})}


def _param(where: str, name: str, schema: Schema, description: str = "", *, required: bool = False,
           **more: Any) -> Schema:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            **({"description": description} if description else {}), **more}


def _path(name: str, description: str) -> Schema:
    return _param("path", name, _str(minLength=1), description)


def _query(name: str, schema: Schema, description: str = "", **more: Any) -> Schema:
    return _param("query", name, schema, description, **more)


def _flag(name: str, description: str) -> Schema:
    """A yes/no query parameter: 1, true or yes (any case) mean yes, anything else no."""
    return _query(name, _bool(), description)


def _errors(codes: tuple[int, ...]) -> dict[str, Schema]:
    return {str(code): {"$ref": f"#/components/responses/{_ERROR_NAMES[code]}"} for code in sorted(set(codes))}


def _op(paths: dict[str, dict[str, Schema]], methods: str, path: str, summary: str, tag: str, operation_id: str,
        *, responses: dict[str, Schema], params: list[Schema] | None = None, body: Schema | None = None,
        errors: tuple[int, ...] = (), description: str = "", security: list[dict[str, list[str]]] | None = None,
        open_route: bool = False) -> None:
    """Add an operation under each of `methods` ("PUT POST"); the second and later get a suffixed ID."""
    if not open_route:
        errors = (*errors, *_AUTH_ERRORS)
    for index, method in enumerate(methods.split()):
        operation: Schema = {
            "operationId": operation_id if index == 0 else f"{operation_id}{method.title()}",
            "summary": summary,
            "tags": [tag],
            "responses": {**responses, **_errors(errors)},
        }
        if description:
            operation["description"] = description
        if params:
            operation["parameters"] = params
        if body is not None:
            operation["requestBody"] = body
        if security is not None:
            operation["security"] = security
        paths.setdefault(path, {})[method.lower()] = operation


# -- components -------------------------------------------------------------------------------------------


def _spec_schemas() -> dict[str, Schema]:
    """The job spec as `shoal.spec` reads it: keys match case-insensitively, unknown keys are ignored."""
    return {
        "EngineSpec": _obj({
            "Type": _enum(EngineType, "docker or wasm (any case)"),
            "Params": {"anyOf": [_ref("DockerParams"), _ref("WasmParams")]},
        }, required=["Type"]),
        "DockerParams": _obj({
            "Image": _str("An image reference", maxLength=512),
            "Entrypoint": _strings(),
            "Parameters": _strings(),
            "EnvironmentVariables": _strings("KEY=VALUE"),
            "WorkingDirectory": _str("An absolute path"),
        }, required=["Image"]),
        "WasmParams": _obj({
            "EntryModule": _str("The Target of one of the task's InputSources"),
            "Entrypoint": _str(default="_start"),
            "Parameters": _strings(),
            "ImportModules": _strings("Not supported yet: must be empty"),
        }, required=["EntryModule"]),
        "PublisherSpec": _nullable(_obj({
            "Type": _enum(PublisherType, "s3managed (the default) or noop"),
            "Params": {"type": "object"},
        }, required=["Type"])),
        "SourceSpec": _obj({
            "Type": _enum(SourceType),
            "Params": {
                "type": "object",
                "description": "urlDownload and inline: {URL}; s3: {Bucket, Key, Filter, Region, Endpoint, "
                               "VersionID, ChecksumSHA256, Partition}; local: {SourcePath, ReadWrite}; "
                               "managed: {Key} from POST /api/v1/uploads",
            },
        }, required=["Type"]),
        "S3Partition": _obj({
            "Type": _enum(PartitionType), "Pattern": _str(), "StartIndex": _int(), "EndIndex": _int(),
            "DateFormat": _str("A Go reference-time layout, e.g. 2006-01-02"),
        }),
        "InputSource": _obj({"Source": _ref("SourceSpec"), "Alias": _str(), "Target": _str("An absolute path")},
                            required=["Source", "Target"]),
        "ResultPath": _obj({"Name": _str(pattern="^[A-Za-z0-9][A-Za-z0-9_.-]*$"), "Path": _str("An absolute path")},
                           required=["Name", "Path"]),
        "Resources": _obj({"CPU": _str("e.g. 500m, 2"), "Memory": _str("e.g. 512Mb, 2Gi"), "Disk": _str(),
                           "GPU": _str("Only 0: GPU tasks are not supported yet")}),
        "Network": _obj({"Type": _str("Only None: tasks run without a network"), "Domains": _strings()}),
        "Timeouts": _obj({name: _int("Seconds; 0 for none", minimum=0)
                          for name in ("ExecutionTimeout", "QueueTimeout", "TotalTimeout")}),
        "Constraint": _obj({
            "Key": _str(),
            "Operator": _enum(["=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"]),
            "Values": _strings(),
        }, required=["Key", "Operator"]),
        "Task": _obj({
            "Name": _str(default="main"),
            "Engine": _ref("EngineSpec"),
            "Publisher": _ref("PublisherSpec"),
            "Env": _string_map("Names of uppercase letters, digits and _; not SHOAL_* or BACALHAU_*"),
            "Meta": _string_map(),
            "InputSources": _array(_ref("InputSource")),
            "ResultPaths": _array(_ref("ResultPath")),
            "Resources": _ref("Resources"),
            "Network": _ref("Network"),
            "Timeouts": _ref("Timeouts"),
        }, required=["Engine"]),
        "JobSpec": _obj({
            "Name": _str("Submitting a spec under an existing Name makes a new version of that job"),
            "Namespace": _str(default="default"),
            "Type": _enum(JobType, "batch (the default), ops, daemon or service (any case)"),
            "Priority": _int(),
            "Count": _nullable(_int("Partitions; ops and daemon jobs run once per matching node instead",
                                    minimum=0, maximum=MAX_COUNT)),
            "Constraints": _array(_ref("Constraint")),
            "Labels": _string_map(),
            "Meta": _string_map(),
            "Tasks": _array(_ref("Task"), "Exactly one task", minItems=1, maxItems=1),
        }, required=["Tasks"], description="Bacalhau's job spec; keys match regardless of case"),
    }


def _record_schemas() -> dict[str, Schema]:
    """What the gateway answers with (`gateway.wire`, `gateway.history`)."""
    transition = _nullable(_obj({"Previous": _str(), "New": _str()}, required=["Previous", "New"]))
    return {
        "Error": _obj({
            "Status": _int("The HTTP status"),
            "Message": _str(),
            "Code": _str("BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, "
                         "TooManyRequests, HTTPError, InternalError"),
            "RequestID": _str("As in the X-Request-ID header"),
            "Hint": _str("What to do about it, when the gateway knows"),
        }, required=["Status", "Message", "Code", "RequestID"]),
        "Job": _obj({
            "Priority": _int(), "Constraints": _array(_ref("Constraint")), "Labels": _string_map(),
            "Meta": _string_map(),
            "ID": _str(), "Name": _str(), "Namespace": _str(), "Type": _enum(JobType),
            "Count": _int(minimum=0),
            "Tasks": _array(_ref("Task")),
            "State": _obj({"StateType": _enum(JobState), "Message": _str()}, required=["StateType", "Message"]),
            "Version": _int(minimum=1), "Revision": _int(minimum=1),
            "CreateTime": _nanos("Submission of the current version"), "ModifyTime": _nanos("Last change"),
        }, required=["ID", "Name", "Namespace", "Type", "Count", "Tasks", "State", "Version", "Revision",
                     "CreateTime", "ModifyTime"], description="A job: its spec, defaults filled in, and its state"),
        "Execution": _obj({
            "ID": _str(), "Namespace": _str(), "JobID": _str(), "JobVersion": _int(), "NodeID": _str(),
            "PartitionIndex": _int(minimum=0), "Attempt": _int(minimum=1),
            "DesiredState": _obj({"StateType": _enum(DesiredState), "Message": _str()},
                                 required=["StateType", "Message"]),
            "ComputeState": _obj({"StateType": _enum(ExecutionState), "Message": _str()},
                                 required=["StateType", "Message"]),
            "RunOutput": _nullable(_obj({
                "Stdout": _str(), "StdoutTruncated": _bool(), "stderr": _str("Lowercase, as Bacalhau writes it"),
                "StderrTruncated": _bool(), "ExitCode": _int(), "ErrorMsg": _str(),
            }, required=["Stdout", "StdoutTruncated", "stderr", "StderrTruncated", "ExitCode", "ErrorMsg"],
                description="Null until the execution has completed")),
            "PublishedResult": _nullable(_obj({"Type": _str(), "Params": {"type": "object"}}, required=["Type"])),
            "Revision": _int(), "CreateTime": _nanos("Creation"), "ModifyTime": _nanos("Last change"),
        }, required=["ID", "Namespace", "JobID", "JobVersion", "NodeID", "PartitionIndex", "Attempt",
                     "DesiredState", "ComputeState", "RunOutput", "PublishedResult", "Revision", "CreateTime",
                     "ModifyTime"]),
        "HistoryEvent": _obj({
            "SeqNum": _int("Pass as next_token to continue after this event"),
            "Type": _enum(["JobLevel", "ExecutionLevel"]),
            "JobID": _str(), "JobVersion": _int(), "ExecutionID": _str("Empty for job-level events"),
            "Event": _obj({"Message": _str(), "Topic": _str(), "Timestamp": _nanos("When"),
                           "Details": {"type": "object"}}, required=["Message", "Topic", "Timestamp", "Details"]),
            "Time": _nanos("When"),
            "JobState": transition,
            "ExecutionState": transition,
        }, required=["SeqNum", "Type", "JobID", "JobVersion", "ExecutionID", "Event", "Time", "JobState",
                     "ExecutionState"]),
        "ResultItem": _obj({
            "Type": _enum(["s3PreSigned"]),
            "Params": _obj({
                "PreSignedURL": _str("GET it for the execution's results, a .tar.gz"), "Managed": _bool(),
                "ExecutionID": _str(), "PartitionIndex": _int(), "SHA256": _str(), "Size": _int(minimum=0),
            }, required=["PreSignedURL", "Managed", "ExecutionID", "PartitionIndex", "SHA256", "Size"]),
        }, required=["Type", "Params"]),
        "Node": _obj({
            "Info": _obj({
                "NodeID": _str(), "Name": _str(), "NodeType": _enum(["Compute"]), "Labels": _string_map(),
                "BacalhauVersion": _obj({"GitVersion": _str()}, required=["GitVersion"]),
                "ComputeNodeInfo": _obj({
                    "ExecutionEngines": _strings(), "Publishers": _strings(), "StorageSources": _strings(),
                    "MaxCapacity": {"type": "object"},
                }, required=["ExecutionEngines", "Publishers", "StorageSources", "MaxCapacity"]),
            }, required=["NodeID", "Name", "NodeType", "Labels", "BacalhauVersion", "ComputeNodeInfo"]),
            "Membership": _enum(NodeMembership),
            "Connection": _enum(NodeConnection),
            "ConnectionState": _obj({"Status": _enum(NodeConnection), "LastHeartbeat": _nanos("Last poll"),
                                     "ConnectedSince": _nanos("Registration")},
                                    required=["Status", "LastHeartbeat", "ConnectedSince"]),
        }, required=["Info", "Membership", "Connection", "ConnectionState"]),
        "SubmitResponse": _obj({
            "JobID": _str(), "JobVersion": _int(minimum=1), "EvaluationID": _str("Always empty"),
            "Warnings": _strings(),
        }, required=["JobID", "JobVersion", "EvaluationID", "Warnings"]),
        "NodeInfo": _obj({
            "Name": _str(), "Labels": _string_map(), "Engines": _strings("e.g. docker, wasm"),
            "Publishers": _strings(), "StorageSources": _strings(),
            "Capacity": _obj({"CPU": _num("Cores"), "Memory": _num("Bytes"), "Disk": _num("Bytes"),
                              "GPU": _num()}, description="What the node offers; an absent resource is unlimited"),
            "Version": _str(),
        }, description="What a compute node says about itself"),
        "PresignedRequest": _obj(_presigned_properties(), required=["URL", "Method", "Headers", "Key"]),
        "LogChunk": _obj({
            "Stream": _enum(["stdout", "stderr"]), "Offset": _int("Characters of the stream before it", minimum=0),
            "Data": _str(maxLength=64 << 10),
        }, required=["Stream", "Offset", "Data"]),
        "LogEntry": _obj({
            "Type": _int("1 for stdout, 2 for stderr", enum=[1, 2]), "Stream": _enum(["stdout", "stderr"]),
            "Line": _str(), "ExecutionID": _str(),
        }, required=["Type", "Stream", "Line", "ExecutionID"]),
    }


def _error_responses() -> dict[str, Schema]:
    auth_header = {"WWW-Authenticate": {"schema": _str(), "description": "How to authenticate"}}
    texts = {
        400: "The request is malformed; the message names the field",
        401: "No valid credentials",
        403: "Valid credentials that do not allow this",
        404: "No such object (or not one the caller may see)",
        409: "The object is not in a state that allows this",
        413: "The request body (or the declared size) is over its limit",
        429: "Too many failed authentications from this client; try again later",
    }
    return {_ERROR_NAMES[code]: _json(text, _ref("Error"), headers=auth_header if code == 401 else None)
            for code, text in texts.items()}


# -- paths ------------------------------------------------------------------------------------------------

_NAMESPACE = _query("namespace", _str(), "The job's namespace (default: default)")
_REF = _path("ref", "A job ID, a unique prefix of one, or a job Name")
_EXECUTION = _path("id", "An execution assigned to the calling node")
_SHA256 = _str("SHA-256, 64 hex digits", pattern="^[0-9a-fA-F]{64}$")
_EXAMPLE_JOB = {
    "Name": "hello", "Type": "batch", "Count": 1,
    "Tasks": [{"Name": "main", "Engine": {"Type": "docker", "Params": {
        "Image": "busybox:1", "Entrypoint": ["/bin/sh", "-c"], "Parameters": ["echo hello"]}}}],
}


def _jobs(paths: dict[str, dict[str, Schema]]) -> None:
    spec_body = _body(
        {"anyOf": [_obj({"Job": _ref("JobSpec"), "Force": _bool("Submit even if the spec is unchanged")},
                        required=["Job"]), _ref("JobSpec")]},
        description="`{Job, Force}` as Bacalhau's API sends it, or a bare spec. As application/yaml (also "
                    "application/x-yaml, text/yaml, text/x-yaml) the body is a bare spec in YAML.",
        required=True, example={"Job": _EXAMPLE_JOB},
    )
    spec_body["content"]["application/yaml"] = {"schema": _ref("JobSpec")}
    one, bare = spec_body["content"]["application/json"]["schema"]["anyOf"]
    many = _obj({"Jobs": _array(_ref("JobSpec"), "Stored in one transaction, in this order: all of them, or none",
                                minItems=1, maxItems=MAX_BATCH),
                 "Force": _bool("Submit even if a named job's spec is unchanged")}, required=["Jobs"])
    submit_body = _body({"anyOf": [one, many, bare]}, required=True, example={"Job": _EXAMPLE_JOB},
                        description=spec_body["description"] + " `{Jobs, Force}` submits several jobs at once.")
    submit_body["content"]["application/yaml"] = {"schema": _ref("JobSpec")}
    _op(paths, "PUT POST", JOBS, "Submit a job (or several), or a new version of the job with its Name", "Jobs",
        "submitJob", body=submit_body, errors=(400, 403, 413), responses={"200": _json("Submitted", {"anyOf": [
            _ref("SubmitResponse"),
            _obj({"Jobs": _array(_ref("SubmitResponse"), "One per job submitted, in its order")}, required=["Jobs"]),
        ]})})
    _op(paths, "PUT POST", JOBS + "/diff", "Validate a spec and show how it differs from the job's latest version",
        "Jobs", "diffJob", body=spec_body, errors=(400, 413),
        responses={"200": _json("The unified diff (from /dev/null for a new job)",
                                _obj({"Diff": _str(), "Warnings": _strings()}, required=["Diff", "Warnings"]))})
    _op(paths, "GET", JOBS, "List jobs, newest first", "Jobs", "listJobs", errors=(400, 404), params=[
        _query("namespace", _str(), "A namespace, or * for every namespace the caller may see"),
        _query("order_by", _enum(["created_at", "create_time", "id"])),
        _flag("reverse", "Oldest (or lowest ID) first"),
        _query("limit", _int(minimum=1, maximum=1000, default=100)),
        _query("next_token", _str(), "From the previous page; it carries order_by, reverse and limit"),
        _query("state", _str(), "Only jobs in this state (any case)"),
        _query("labels", _strings(), "Label selectors (region=eu,tier!=x,zone in (a,b),ssd,!spot,cores>4)",
               style="form", explode=True),
    ], responses={"200": _json("One page of jobs", _page(_ref("Job")))})
    include = _query("include", _str(), "Comma-separated: history, executions")
    job_version = _query("job_version", _int(minimum=0, maximum=2**31), "A version of the job (0: the latest)")
    _op(paths, "GET", JOBS + "/{ref}", "Describe a job", "Jobs", "getJob", errors=(400, 404),
        params=[_REF, _NAMESPACE, include, job_version],
        responses={"200": _json("The job", _obj({
            "Job": _ref("Job"), "History": _page(_ref("HistoryEvent")), "Executions": _page(_ref("Execution")),
        }, required=["Job"]))})
    _op(paths, "DELETE", JOBS + "/{ref}", "Stop a job", "Jobs", "stopJob", errors=(400, 404, 409),
        description="Waiting executions are cancelled, running ones are cancelled on their agents. Stopping a "
                    "stopped job changes nothing; a completed job cannot be stopped (409).",
        params=[_REF, _NAMESPACE, _query("reason", _str(), "Kept in the job's state (first 1024 characters)")],
        responses={"200": _json("Stopped", _obj({"EvaluationID": _str("Always empty")}, required=["EvaluationID"]))})
    _op(paths, "GET", JOBS + "/{ref}/executions", "List a job's executions", "Jobs", "listExecutions",
        errors=(400, 404),
        params=[_REF, _NAMESPACE, _flag("all_job_versions", "Executions of every version"), job_version],
        responses={"200": _json("The executions of the latest version, or of job_version",
                                _page(_ref("Execution")))})
    _op(paths, "GET", JOBS + "/{ref}/results", "Presigned URLs of the published results", "Jobs", "jobResults",
        errors=(400, 404), params=[_REF, _NAMESPACE],
        responses={"200": _json("One item per completed execution of the latest version that published",
                                _page(_ref("ResultItem")))})
    _op(paths, "GET", JOBS + "/{ref}/history", "A job's events, oldest first", "Jobs", "jobHistory",
        errors=(400, 404), params=[
            _REF, _NAMESPACE,
            _query("event_type", _enum(["all", "job", "execution"])),
            _query("limit", _int(minimum=1, maximum=1000, default=100)),
            _query("next_token", _int(minimum=0, maximum=2**62), "The SeqNum to continue after"),
            _query("since", _int(minimum=0, maximum=2**40), "Only events at or after this Unix time (seconds)"),
            _query("execution_id", _str(), "Only the events of this execution"),
        ], responses={"200": _json("One page of events", _page(_ref("HistoryEvent")))})
    _op(paths, "GET", JOBS + "/{ref}/versions", "Every version of a job's spec", "Jobs", "jobVersions",
        errors=(400, 404), params=[_REF, _NAMESPACE],
        responses={"200": _json("The versions, oldest first", _page(_ref("Job")))})
    _op(paths, "PUT POST", JOBS + "/{ref}/rerun", "Run a job again as a new version", "Jobs", "rerunJob",
        errors=(400, 404, 409, 413), params=[_REF, _NAMESPACE],
        description="A job that has not run yet (Pending or Queued) cannot be rerun (409).",
        body=_body(_obj({"JobVersion": _int("The version whose spec to run (0: the latest)", minimum=0)})),
        responses={"200": _json("The new version", _ref("SubmitResponse"))})
    _op(paths, "GET", JOBS + "/{ref}/logs", "An execution's logs", "Jobs", "jobLogs", errors=(400, 404),
        description="Plain text by default; NDJSON with `Accept: application/x-ndjson` or format=ndjson; "
                    "Server-Sent Events (`event: log`) with `Accept: text/event-stream` or format=sse. The same "
                    "path also accepts a WebSocket (`Upgrade: websocket`): one `{\"value\": {Type, Stream, "
                    "Line}, \"error\": \"\"}` message per line, then a normal close. With follow, the answer "
                    "lasts until the execution has ended.",
        params=[
            _REF, _NAMESPACE,
            _query("execution_id", _str(), "An execution ID or unique prefix (default: the job's most relevant)"),
            _flag("follow", "Keep streaming until the execution ends"),
            _query("tail", _int(minimum=0, maximum=1_000_000), "Only the last lines of the history so far"),
            _query("format", _enum(["text", "ndjson", "sse"])),
        ],
        responses={"200": {
            "description": "The lines, as they were shipped",
            "headers": {**_HEADERS, "X-Execution-ID": {"schema": _str(), "description": "The execution shown"}},
            "content": {
                "text/plain": {"schema": _str()},
                "application/x-ndjson": {"schema": _array(_ref("LogEntry"), "One JSON object per line")},
                "text/event-stream": {"schema": _str()},
            },
        }})


def _nodes(paths: dict[str, dict[str, Schema]]) -> None:
    action = _body(_obj({
        "Action": _enum(["approve", "reject", "delete"], "Any case"),
        "NodeID": _str("The node's ID or a unique prefix (when the path does not name it)"),
        "Message": _str("Kept in the audit log"),
    }, required=["Action"]), required=True)
    ok = {"200": _json("Done", _obj({"Success": _bool()}, required=["Success"]))}
    _op(paths, "GET", NODES, "List compute nodes", "Nodes", "listNodes", errors=(400,), params=[
        _query("filter-approval", _enum(NodeMembership), "Any case"),
        _query("filter-status", _enum(NodeConnection), "Any case"),
    ], responses={"200": _json("The nodes", _obj({"Nodes": _array(_ref("Node")), "NextToken": _str()},
                                                 required=["Nodes", "NextToken"]))})
    _op(paths, "PUT POST", NODES, "Approve, reject or delete a node", "Nodes", "updateNode",
        errors=(400, 404, 413), body=action, responses=ok)
    _op(paths, "GET", NODES + "/{ref}", "Describe a node", "Nodes", "getNode", errors=(400, 404),
        params=[_path("ref", "A node ID or a unique prefix of one")],
        responses={"200": _json("The node", _obj({"Node": _ref("Node")}, required=["Node"]))})
    _op(paths, "PUT", NODES + "/{ref}", "Approve, reject or delete the node", "Nodes", "updateNamedNode",
        errors=(400, 404, 413), params=[_path("ref", "A node ID or a unique prefix of one")], body=action,
        responses=ok)


def _compute(paths: dict[str, dict[str, Schema]]) -> None:
    node_errors = (400, 401, 403, 413)  # a bad body; an unknown or rejected node
    execution_errors = (*node_errors, 404, 409)  # not this node's execution; one that has ended
    _op(paths, "POST", COMPUTE + "/register", "Register a compute node", "Agent protocol", "registerNode",
        open_route=True, errors=(400, 401, 413, 429), security=[{"bearerAuth": []}, {}],
        description="With a join token configured (or issued), it must be sent as the Bearer token.",
        body=_body(_ref("NodeInfo")), responses={"200": _json("The node's ID and its credential (shown once)", _obj({
            "NodeID": _str(), "Credential": _str("Send it as the Bearer token of every other agent call"),
            "LeaseSeconds": _num(), "PollSeconds": _num(),
        }, required=["NodeID", "Credential", "LeaseSeconds", "PollSeconds"]))})
    assignment = _obj({
        "ExecutionID": _str(), "JobID": _str(), "JobType": _enum(JobType), "JobVersion": _int(),
        "Namespace": _str(), "PartitionIndex": _int(minimum=0), "PartitionCount": _int(minimum=0),
        "Attempt": _int(minimum=1), "Task": _ref("Task"), "LeaseSeconds": _num(),
    }, required=["ExecutionID", "JobID", "JobType", "JobVersion", "Namespace", "PartitionIndex", "PartitionCount",
                 "Attempt", "Task", "LeaseSeconds"])
    _op(paths, "POST", COMPUTE + "/poll", "Heartbeat, renew leases, and wait for work", "Agent protocol",
        "pollWork", open_route=True, security=_NODE_SECURITY, errors=node_errors,
        description="Answers as soon as an execution can be claimed or a running one should stop, else with 204 "
                    "after a quarter to all of Wait seconds: the gateway spreads the ends of idle polls evenly "
                    "over time, so that agents that began polling together do not come back together (Wait is at "
                    "most the gateway's poll period).",
        body=_body({"allOf": [_ref("NodeInfo"), _obj({
            "Running": _strings("IDs of the executions the agent runs"),
            "FreeSlots": _int("How many executions it may take now", minimum=0, maximum=10_000),
            "Slots": _int("How many executions the node runs at once: the gateway then counts its free slots "
                          "itself, and fills one that frees while this poll waits", minimum=0, maximum=10_000),
            "Wait": _num("Seconds to wait for work (capped by the gateway)", minimum=0),
        }, description="NodeInfo fields update the node when Engines is present")]}),
        responses={
            "200": _json("Executions to run, and IDs of executions to stop", _obj({
                "Executions": _array(assignment), "Cancel": _strings(),
            }, required=["Executions", "Cancel"])),
            "204": _empty("Nothing to do"),
        })
    _op(paths, "POST", COMPUTE + "/executions/{id}/status", "Report an execution Running or Publishing",
        "Agent protocol", "reportStatus", open_route=True, security=_NODE_SECURITY, errors=execution_errors,
        params=[_EXECUTION], body=_body(_obj({
            "State": _enum([ExecutionState.RUNNING, ExecutionState.PUBLISHING]), "Message": _str(),
        }, required=["State"]), required=True),
        responses={"200": _json("The lease is renewed", _obj({"LeaseSeconds": _num()}, required=["LeaseSeconds"]))})
    _op(paths, "POST", COMPUTE + "/executions/{id}/publish", "A presigned PUT for the execution's results",
        "Agent protocol", "publishResults", open_route=True, security=_NODE_SECURITY, errors=execution_errors,
        params=[_EXECUTION], body=_body(_obj({
            "Size": _int("Bytes of the .tar.gz (over the gateway's limit: 413)", minimum=0), "SHA256": _SHA256,
        }, required=["Size", "SHA256"]), required=True),
        responses={"200": _json("PUT exactly that many bytes with that digest", _ref("PresignedRequest"))})
    outcome = {
        "ExitCode": _int(), "Stdout": _str(), "Stderr": _str(), "StdoutTruncated": _bool(),
        "StderrTruncated": _bool(), "Published": _bool("The results were uploaded"),
        "StartTime": _int("When the task started (ns since the epoch), for an execution not reported Running "
                          "before: the Running state is recorded at that time", minimum=0),
        "Logs": _array(_ref("LogChunk"), "The last log chunks, sent along instead of on their own"),
    }
    slots = _int("How many executions the node runs at once: the slots the completions free are filled in the "
                 "same transaction, and the answer brings what was taken", minimum=0, maximum=10_000)
    _op(paths, "POST", COMPUTE + "/executions/{id}/complete", "Report an execution completed", "Agent protocol",
        "completeExecution", open_route=True, security=_NODE_SECURITY, errors=execution_errors,
        description="With Published, the uploaded object must have the size and digest declared at publish; "
                    "otherwise the execution fails (409).",
        params=[_EXECUTION], body=_body(_obj(outcome | {"Slots": slots}, required=["ExitCode"]), required=True),
        responses={"200": _json("Recorded; with Slots, the executions taken for the freed slot", _obj({
            "Executions": _array(assignment)}, required=["Executions"]))})
    _op(paths, "POST", COMPUTE + "/completions", "Report several executions completed", "Agent protocol",
        "completeExecutions", open_route=True, security=_NODE_SECURITY, errors=node_errors,
        description="completeExecution for each, in one transaction. An execution the node may not report on "
                    "(not its own, ended, results not as declared) is answered in Rejected with the status and "
                    "message completeExecution would give; the others complete.",
        body=_body(_obj({
            "Completions": _array(_obj(outcome | {"ExecutionID": _str()}, required=["ExecutionID", "ExitCode"]),
                                  "At most 1000, each execution once"),
            "Slots": slots,
        }, required=["Completions"]), required=True),
        responses={"200": _json("Recorded; with Slots, the executions taken for the freed slots", _obj({
            "Executions": _array(assignment),
            "Rejected": _array(_obj({"ExecutionID": _str(), "Status": _int(), "Message": _str()},
                                    required=["ExecutionID", "Status", "Message"])),
            "Gather": _bool("Other nodes report completions to this gateway too: the agent sends its executions' "
                            "completions together (else each at once)"),
        }, required=["Executions", "Rejected", "Gather"]))})
    _op(paths, "POST", COMPUTE + "/executions/{id}/fail", "Report a system error that ended an execution",
        "Agent protocol", "failExecution", open_route=True, security=_NODE_SECURITY, errors=execution_errors,
        params=[_EXECUTION], body=_body(_obj({"Message": _str()})),
        responses={"200": _json("Whether another attempt was scheduled",
                                _obj({"Rescheduled": _bool()}, required=["Rescheduled"]))})
    _op(paths, "POST", COMPUTE + "/executions/{id}/logs", "Ship log chunks of a running execution",
        "Agent protocol", "appendLogs", open_route=True, security=_NODE_SECURITY, errors=execution_errors,
        description="Offsets count characters of each stream; a chunk sent twice is stored once. Past the "
                    "execution's log limit the rest is dropped (413).",
        params=[_EXECUTION], body=_body(_obj({"Chunks": _array(_ref("LogChunk"))})),
        responses={"200": _json("Characters stored", _obj({"Kept": _int(minimum=0)}, required=["Kept"]))})


def _files(paths: dict[str, dict[str, Schema]]) -> None:
    _op(paths, "POST", "/api/v1/uploads", "A presigned PUT for a managed input", "Uploads", "createUpload",
        errors=(400, 404, 413), body=_body(_obj({
            "Name": _str("A file name", pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"),
            "Size": _int("Bytes (over the gateway's limit: 413)", minimum=0),
            "SHA256": _SHA256,
            "Namespace": _str(pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", default="default"),
        }, required=["Name", "Size", "SHA256"]), required=True),
        responses={"201": _json("PUT the file there, then name Source in a job's InputSources", _obj({
            **_presigned_properties(),
            "ExpiresIn": _int("Seconds the URL is good for"),
            "Source": _obj({"Type": _enum(["managed"]), "Params": _obj({"Key": _str()}, required=["Key"])},
                           required=["Type", "Params"]),
        }, required=["URL", "Method", "Headers", "Key", "ExpiresIn", "Source"]))})
    key = _path("key", "The object's key (may contain /)")
    signed = [
        _query("method", _enum(["GET", "PUT"])), _query("expires", _int(), "Unix time (seconds)"),
        _query("size", _int(minimum=0), "PUT only"), _query("sha256", _str(), "PUT only"),
        _query("signature", _str()),
    ]
    described = "The embedded object store (a gateway without S3); the URL must be one the gateway signed for "\
        "this method and key, and not have expired (403)."
    _op(paths, "GET", "/api/v1/objects/{key}", "Download an object through a presigned URL", "Objects",
        "getObject", open_route=True, errors=(403, 404), params=[key, *signed], description=described,
        responses={"200": {"description": "The object", "headers": _HEADERS, "content": {
            "application/gzip": {"schema": _str(format="binary")}}}})
    _op(paths, "PUT", "/api/v1/objects/{key}", "Upload an object through a presigned URL", "Objects",
        "putObject", open_route=True, errors=(400, 403, 404, 413), params=[key, *signed], description=described,
        body=_body(_str(format="binary"), required=True, media_types=("application/octet-stream",),
                   description="Exactly the signed number of bytes, with the signed SHA-256"),
        responses={"200": _json("Stored", _obj({"Key": _str(), "Size": _int(minimum=0)}, required=["Key", "Size"]))})


def _presigned_properties() -> dict[str, Schema]:
    return {"URL": _str(), "Method": _enum(["PUT"]), "Headers": _string_map("Send these with the request"),
            "Key": _str("The object's key")}


def _service(paths: dict[str, dict[str, Schema]]) -> None:
    alive = _json("The gateway is up", _obj({"Status": _enum(["OK"])}, required=["Status"]))
    _op(paths, "GET", "/api/v1/agent/alive", "Liveness", "Gateway", "alive", open_route=True,
        responses={"200": alive})
    _op(paths, "GET", "/livez", "Liveness", "Gateway", "livez", open_route=True, responses={"200": alive})
    _op(paths, "GET", "/api/v1/agent/version", "The gateway's version", "Gateway", "version", open_route=True,
        responses={"200": _json("Bacalhau's BuildVersionInfo", _obj(
            {name: _str() for name in ("Major", "Minor", "GitVersion", "GitCommit", "BuildDate", "GOOS", "GOARCH")},
            required=["Major", "Minor", "GitVersion", "GitCommit", "BuildDate", "GOOS", "GOARCH"]))})
    redirect = _empty("To /api/v1/agent/version", headers={"Location": {"schema": _str()}})
    _op(paths, "GET", "/", "Redirect to the version", "Gateway", "root", open_route=True,
        responses={"307": redirect})
    _op(paths, "GET", "/version", "Redirect to the version", "Gateway", "versionRedirect", open_route=True,
        responses={"307": redirect})
    _op(paths, "GET", OPENAPI_PATH, "This document", "Gateway", "openapi", open_route=True,
        responses={"200": _json("OpenAPI 3.0.3", {"type": "object"})})


def _credentials(paths: dict[str, dict[str, Schema]]) -> None:
    token = _obj({
        "ID": _str(), "Name": _str(), "Prefix": _str("The secret's first characters"),
        "Capabilities": _strings(), "Namespace": _str(), "CreatedBy": _str(),
        "CreateTime": _nanos("Created"), "ExpireTime": _nanos("Expires"),
        "LastUsed": _nullable(_nanos("Last used")), "RevokeTime": _nullable(_nanos("Revoked")),
        "Active": _bool("Neither expired nor revoked"),
    }, required=["ID", "Name", "Prefix", "Capabilities", "Namespace", "CreatedBy", "CreateTime", "ExpireTime",
                 "LastUsed", "RevokeTime", "Active"])
    capabilities = _array(_enum(["read:job", "write:job", "read:node", "write:node", "read:agent", "write:agent",
                                 "read:*", "write:*", "*"]), minItems=1)
    _op(paths, "POST", "/api/v1/auth/tokens", "Create a scoped CI token (its secret is shown once)", "Credentials",
        "createToken", errors=(400, 404), body=_body(_obj({
            "Name": _str(minLength=1, maxLength=100), "Capabilities": capabilities,
            "Namespace": _str("Default: the caller's"),
            "ExpiresIn": _int("Seconds (default a day)", minimum=1, maximum=365 * 24 * 3600),
        }, required=["Name", "Capabilities"]), required=True),
        responses={"201": _json("The token and its secret", _obj({"Token": token, "Secret": _str()},
                                                                 required=["Token", "Secret"]))})
    _op(paths, "GET", "/api/v1/auth/tokens", "The caller's tokens (an administrator's: all)", "Credentials",
        "listTokens", responses={"200": _json("Tokens, never their secrets", _obj(
            {"Items": _array(token)}, required=["Items"]))})
    _op(paths, "DELETE", "/api/v1/auth/tokens/{id}", "Revoke a token", "Credentials", "revokeToken",
        errors=(404,), params=[_path("id", "The token's ID")],
        responses={"200": _json("The revoked token", _obj({"Token": token}, required=["Token"]))})
    _op(paths, "POST", NODES + "/join-tokens", "Create an expiring join token for compute nodes", "Nodes",
        "createJoinToken", errors=(400,), body=_body(_obj({
            "ExpiresIn": _int("Seconds (default an hour)", minimum=1, maximum=30 * 24 * 3600)})),
        responses={"201": _json("shoal agent --token SECRET", _obj(
            {"ID": _str(), "Secret": _str(), "ExpireTime": _nanos("Expires")},
            required=["ID", "Secret", "ExpireTime"]))})
    entry = _obj({"Seq": _int(), "Time": _nanos("When"), "Actor": _str(), "Action": _str(), "Target": _str(),
                  "Namespace": _str(), "Detail": _str()},
                 required=["Seq", "Time", "Actor", "Action", "Target", "Namespace", "Detail"])
    _op(paths, "GET", "/api/v1/audit", "Who did what, oldest first (administrators)", "Credentials", "audit",
        errors=(400,), params=[
            _query("limit", _int(minimum=1, maximum=1000, default=100)),
            _query("next_token", _int(minimum=0), "The sequence number to continue after"),
            _query("actor", _str()), _query("action", _str()),
        ], responses={"200": _json("Audit entries", _page(entry))})
    _op(paths, "GET", "/api/v1/agent/node", "This gateway as an orchestrator node", "Gateway", "agentNode",
        responses={"200": _json("The node", _obj({"NodeID": _str(), "NodeType": _str(), "Address": _str()},
                                                 required=["NodeID", "NodeType"]))})
    _op(paths, "GET", "/api/v1/agent/config", "The gateway's configuration, secrets redacted", "Gateway",
        "agentConfig", responses={"200": _json("The configuration", _obj({"Config": {"type": "object"}},
                                                                         required=["Config"]))})


def _paths() -> dict[str, dict[str, Schema]]:
    paths: dict[str, dict[str, Schema]] = {}
    for add in (_jobs, _nodes, _compute, _files, _credentials, _service):
        add(paths)
    return paths


def build_document() -> dict[str, Any]:
    paths = _paths()
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Shoal gateway",
            "version": __version__,
            "description": "Bacalhau's orchestrator API v1 for Docker and WebAssembly jobs, and the protocol "
                           "of Shoal's long-polling compute agents. Errors are `{Status, Message, Code, "
                           "RequestID, Hint?}`; every answer carries its request ID in `X-Request-ID`.",
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"basicAuth": []}, {"bearerAuth": []}],
        "tags": [{"name": name} for name in dict.fromkeys(
            tag for methods in paths.values() for operation in methods.values() for tag in operation["tags"])],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic", "description": "A configured user"},
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An API key, a CI token or an OIDC JWT; for the agent protocol, "
                                              "the node credential from registration (or a join token to "
                                              "register)"},
            },
            "headers": {"X-Request-ID": {"schema": _str(), "description": "The request's ID, as in error bodies"}},
            "schemas": {**_spec_schemas(), **_record_schemas()},
            "responses": _error_responses(),
        },
    }


DOCUMENT = build_document()


async def openapi_json(_: Request) -> JSONResponse:
    return JSONResponse(DOCUMENT)


routes: list[Route] = [Route(OPENAPI_PATH, openapi_json, methods=["GET"])]
