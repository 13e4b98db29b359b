"""The job spec: Bacalhau's `models.Job`, read from JSON or YAML with keys matched case-insensitively.

`parse_job` turns a mapping into a validated `Job` whose `wire()` form is PascalCase, as Bacalhau writes it.
Every problem is a `SpecError` naming the field, e.g. `Tasks[0].Engine.Params.Image: field required`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shoal.documents import check_document
from shoal.errors import SpecError
from shoal.resources import parse_bytes, parse_cpu


class JobType(StrEnum):
    BATCH = "batch"
    OPS = "ops"
    DAEMON = "daemon"
    SERVICE = "service"


class EngineType(StrEnum):
    DOCKER = "docker"
    WASM = "wasm"


class PublisherType(StrEnum):
    S3MANAGED = "s3managed"
    NOOP = "noop"


class SourceType(StrEnum):
    URL_DOWNLOAD = "urlDownload"
    INLINE = "inline"
    S3 = "s3"
    LOCAL = "local"
    MANAGED = "managed"


class PartitionType(StrEnum):
    NONE = "none"
    OBJECT = "object"
    REGEX = "regex"
    SUBSTRING = "substring"
    DATE = "date"


NODE_BOUND_TYPES = (JobType.OPS, JobType.DAEMON)  # one execution per matching node, no Count
RESERVED_ENV_PREFIXES = ("SHOAL_", "BACALHAU_")
MAX_INLINE_BYTES = 1 << 20
MANAGED_KEY = r"^uploads/[A-Za-z0-9_.-]+/[0-9a-f]{32}/[A-Za-z0-9_.-]+\Z"  # uploads/<namespace>/<id>/<name>
MAX_COUNT = 10_000
MAX_TIMEOUT = 2**31 - 1  # seconds: some 68 years
_ENV_KEY = re.compile(r"^[A-Z][A-Z0-9_]*\Z")


class SpecModel(BaseModel):
    """A spec object: keys matched to field names regardless of case, unknown keys ignored."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _fold_keys(cls, data: Any) -> Any:
        fields = cls.model_fields
        if not isinstance(data, dict) or all(key in fields for key in data):  # as Bacalhau writes it: kept
            return data
        names = {name.lower(): name for name in fields}
        return {names.get(str(key).lower(), key): value for key, value in data.items()}


M = TypeVar("M", bound=SpecModel)


class SpecConfig(SpecModel):
    Type: str
    Params: dict[str, Any] = Field(default_factory=dict)

    def is_type(self, name: str) -> bool:
        return self.Type.strip().lower() == name.lower()


class InputSource(SpecModel):
    Source: SpecConfig
    Alias: str = ""
    Target: str


class S3Partition(SpecModel):
    Type: str = ""
    Pattern: str = ""
    StartIndex: int = 0
    EndIndex: int = 0
    DateFormat: str = ""


class S3Source(SpecModel):
    Bucket: str
    Key: str = ""
    Filter: str = ""
    Region: str = ""
    Endpoint: str = ""
    VersionID: str = ""
    ChecksumSHA256: str = ""
    Partition: S3Partition = Field(default_factory=S3Partition)


class LocalSource(SpecModel):
    SourcePath: str
    ReadWrite: bool = False


class ManagedSource(SpecModel):
    Key: str


class ResultPath(SpecModel):
    Name: str
    Path: str


class ResourcesConfig(SpecModel):
    CPU: str = ""
    Memory: str = ""
    Disk: str = ""
    GPU: str = ""


class NetworkConfig(SpecModel):
    Type: str = "None"
    Domains: list[str] = Field(default_factory=list)


class TimeoutConfig(SpecModel):
    ExecutionTimeout: int = 0
    QueueTimeout: int = 0
    TotalTimeout: int = 0


class Task(SpecModel):
    Name: str = "main"
    Engine: SpecConfig
    Publisher: SpecConfig | None = None
    Env: dict[str, str] = Field(default_factory=dict)
    Meta: dict[str, str] = Field(default_factory=dict)
    InputSources: list[InputSource] = Field(default_factory=list)
    ResultPaths: list[ResultPath] = Field(default_factory=list)
    Resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    Network: NetworkConfig = Field(default_factory=NetworkConfig)
    Timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)


class Constraint(SpecModel):
    Key: str
    Operator: str
    Values: list[str] = Field(default_factory=list)


class DockerParams(SpecModel):
    Image: str
    Entrypoint: list[str] = Field(default_factory=list)
    Parameters: list[str] = Field(default_factory=list)
    EnvironmentVariables: list[str] = Field(default_factory=list)
    WorkingDirectory: str = ""


class WasmParams(SpecModel):
    EntryModule: str
    Entrypoint: str = "_start"
    Parameters: list[str] = Field(default_factory=list)
    ImportModules: list[str] = Field(default_factory=list)


class Job(SpecModel):
    Name: str = ""
    Namespace: str = "default"
    Type: str = JobType.BATCH
    Priority: int = 0
    Count: int | None = None
    Constraints: list[Constraint] = Field(default_factory=list)
    Labels: dict[str, str] = Field(default_factory=dict)
    Meta: dict[str, str] = Field(default_factory=dict)
    Tasks: list[Task]

    @property
    def task(self) -> Task:
        return self.Tasks[0]

    def wire(self) -> dict[str, Any]:
        """The spec as Bacalhau writes it: PascalCase keys, defaults filled in."""
        return self.model_dump(mode="json")


def parse_job(data: Any, *, checked: bool = False) -> tuple[Job, list[str]]:
    """Validate a job spec mapping; returns the job (defaults filled in) and submission warnings. `checked`: the
    mapping comes from `load_document`, which has checked its values already."""
    if not isinstance(data, dict):
        raise SpecError("", "the spec must be a mapping with Type and Tasks")
    if not checked:
        check_document(data)
    data = dict(data)
    warnings = []
    for ignored in ("ID", "State", "Version", "Revision", "CreateTime", "ModifyTime"):
        for key in [k for k in data if str(k).lower() == ignored.lower()]:
            del data[key]
            warnings.append(f"{ignored} is set by the server and was ignored")
    job = _build(Job, data, "")
    _check_job(job)
    return job, warnings


def _build(model: type[M], data: Any, prefix: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise SpecError(_field_path(prefix, error["loc"]), error["msg"].lower()) from None


def _field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _check_job(job: Job) -> None:
    job.Type = job.Type.strip().lower()
    if job.Type not in {t.value for t in JobType}:
        raise SpecError("Type", f"must be one of {', '.join(t.value for t in JobType)}, not {job.Type!r}")
    if job.Type in NODE_BOUND_TYPES:
        if job.Count is not None and job.Count > 1:
            raise SpecError("Count", f"{job.Type} jobs run once on every matching node: Count must be 0 or 1")
        job.Count = 0
    elif job.Count is None:
        job.Count = 1
    if not 0 <= job.Count <= MAX_COUNT:
        raise SpecError("Count", f"must be between 0 and {MAX_COUNT}")
    if not job.Namespace:
        job.Namespace = "default"
    if len(job.Tasks) != 1:
        raise SpecError("Tasks", f"exactly one task is supported, got {len(job.Tasks)}")
    for index, constraint in enumerate(job.Constraints):
        _check_constraint(constraint, f"Constraints[{index}]")
    _check_task(job.task, "Tasks[0]")


_OPERATORS = {"=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"}


def _check_constraint(constraint: Constraint, field: str) -> None:
    op = constraint.Operator.strip().lower()
    if op not in _OPERATORS:
        raise SpecError(f"{field}.Operator", f"must be one of {' '.join(sorted(_OPERATORS))}")
    wanted = {"in": "at least one", "notin": "at least one", "exists": "no", "!": "no"}.get(op, "exactly one")
    count = len(constraint.Values)
    ok = {"at least one": count >= 1, "no": count == 0, "exactly one": count == 1}[wanted]
    if not ok:
        raise SpecError(f"{field}.Values", f"operator {op!r} takes {wanted} value")
    constraint.Operator = op


def _check_task(task: Task, field: str) -> None:
    if not task.Name.strip():
        raise SpecError(f"{field}.Name", "must not be empty")
    _check_env(task.Env, f"{field}.Env")
    _check_inputs(task, field)
    _check_results(task, field)
    _check_engine(task, field)
    _check_publisher(task, field)
    _check_resources(task.Resources, f"{field}.Resources")
    for name in ("ExecutionTimeout", "QueueTimeout", "TotalTimeout"):
        if not 0 <= getattr(task.Timeouts, name) <= MAX_TIMEOUT:
            raise SpecError(f"{field}.Timeouts.{name}", f"must be between 0 and {MAX_TIMEOUT} seconds")
    total = task.Timeouts.TotalTimeout
    if total and task.Timeouts.ExecutionTimeout + task.Timeouts.QueueTimeout > total:
        raise SpecError(f"{field}.Timeouts.TotalTimeout", "must be at least ExecutionTimeout + QueueTimeout")
    if task.Network.Type.strip().lower() not in {"none", "default", ""}:
        raise SpecError(f"{field}.Network.Type", "only None is supported: tasks run without a network")


def _check_env_key(key: str, field: str) -> None:
    if not _ENV_KEY.match(key):
        raise SpecError(field, f"{key!r} must be uppercase letters, digits and _, starting with a letter")
    if key.startswith(RESERVED_ENV_PREFIXES):
        raise SpecError(field, f"{key!r} uses a reserved prefix ({', '.join(RESERVED_ENV_PREFIXES)})")


def _check_env(env: dict[str, str], field: str) -> None:
    for key, value in env.items():
        _check_env_key(key, f"{field}.{key}")
        if value == "":
            raise SpecError(f"{field}.{key}", "must not be empty")


def _check_inputs(task: Task, field: str) -> None:
    targets: set[str] = set()
    for index, source in enumerate(task.InputSources):
        where = f"{field}.InputSources[{index}]"
        _check_abs_path(source.Target, f"{where}.Target")
        if source.Target in targets:
            raise SpecError(f"{where}.Target", f"{source.Target} is used by another input")
        targets.add(source.Target)
        _check_source(source.Source, f"{where}.Source")


def _check_source(source: SpecConfig, field: str) -> None:
    kind = next((t for t in SourceType if source.is_type(t)), None)
    if kind is None:
        raise SpecError(f"{field}.Type", f"must be one of {', '.join(SourceType)}, not {source.Type!r}")
    source.Type = kind.value
    where = f"{field}.Params"
    if kind is SourceType.S3:
        source.Params = _check_s3(_build(S3Source, source.Params, where), where)
    elif kind is SourceType.LOCAL:
        local = _build(LocalSource, source.Params, where)
        _check_abs_path(local.SourcePath, f"{where}.SourcePath")
        source.Params = local.model_dump()
    elif kind is SourceType.MANAGED:
        managed = _build(ManagedSource, source.Params, where)
        if not re.match(MANAGED_KEY, managed.Key):
            raise SpecError(f"{where}.Key", f"{managed.Key!r} is not a key from POST /api/v1/uploads")
        source.Params = managed.model_dump()
    else:
        source.Params = {"URL": _check_url(kind, source.Params, where)}


def _check_url(kind: SourceType, params: dict[str, Any], field: str) -> str:
    url = {str(k).lower(): v for k, v in params.items()}.get("url")
    if not isinstance(url, str) or not url:
        raise SpecError(f"{field}.URL", "field required")
    scheme = _scheme(url, f"{field}.URL")
    if kind is SourceType.URL_DOWNLOAD and scheme not in ("http", "https"):
        raise SpecError(f"{field}.URL", "must be an http or https URL")
    if kind is SourceType.INLINE:
        if scheme != "data":
            raise SpecError(f"{field}.URL", "must be a data: URL")
        if len(url) > MAX_INLINE_BYTES * 4 // 3 + 256:
            raise SpecError(f"{field}.URL", f"inline data is limited to {MAX_INLINE_BYTES} bytes")
    return url


def _scheme(url: str, field: str) -> str:
    """The URL's scheme, once the whole URL (host, port) reads."""
    try:
        parts = urlparse(url)
        _ = parts.port
    except ValueError as exc:
        raise SpecError(field, f"is not a URL: {exc}") from None
    return parts.scheme


def _check_s3(s3: S3Source, field: str) -> dict[str, Any]:
    if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z", s3.Bucket):
        raise SpecError(f"{field}.Bucket", f"{s3.Bucket!r} is not an S3 bucket name")
    if s3.Endpoint and _scheme(s3.Endpoint, f"{field}.Endpoint") not in ("http", "https"):
        raise SpecError(f"{field}.Endpoint", "must be an http or https URL")
    if s3.Filter:
        _check_regex(s3.Filter, f"{field}.Filter")
    partition = s3.Partition
    where = f"{field}.Partition"
    kind = partition.Type.strip().lower() or PartitionType.NONE.value
    if kind not in set(PartitionType):
        raise SpecError(f"{where}.Type", f"must be one of {', '.join(PartitionType)}, not {partition.Type!r}")
    partition.Type = kind
    if kind == PartitionType.REGEX:
        if not partition.Pattern:
            raise SpecError(f"{where}.Pattern", "regex partitioning needs a Pattern")
        _check_regex(partition.Pattern, f"{where}.Pattern")
    if kind == PartitionType.SUBSTRING:
        if partition.StartIndex < 0:
            raise SpecError(f"{where}.StartIndex", "start index cannot be negative")
        if partition.EndIndex <= partition.StartIndex:
            raise SpecError(f"{where}.EndIndex", "end index must be greater than start index")
    if kind == PartitionType.DATE:
        try:
            go_date_format(partition.DateFormat)
        except ValueError as exc:
            raise SpecError(f"{where}.DateFormat", str(exc)) from None
    return s3.model_dump()


def _check_regex(pattern: str, field: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise SpecError(field, f"invalid regex pattern: {exc}") from None


_GO_DATE_TOKENS = (("2006", "%Y"), ("January", "%B"), ("Jan", "%b"), ("Monday", "%A"), ("Mon", "%a"),
                   ("01", "%m"), ("02", "%d"), ("06", "%y"), ("15", "%H"), ("04", "%M"), ("05", "%S"))


def go_date_format(layout: str) -> str:
    """A Go reference-time layout (`2006-01-02`, Bacalhau's `DateFormat`) as a strptime format."""
    if not layout:
        raise ValueError("date partitioning needs a DateFormat, e.g. 2006-01-02")
    result, rest = "", layout
    while rest:
        for token, code in _GO_DATE_TOKENS:
            if rest.startswith(token):
                result, rest = result + code, rest[len(token):]
                break
        else:
            if rest[0].isdigit():
                raise ValueError(f"invalid date format: {layout} (use Go's reference date 2006-01-02 15:04:05)")
            result, rest = result + rest[0].replace("%", "%%"), rest[1:]
    if "%" not in result.replace("%%", ""):
        raise ValueError(f"invalid date format: {layout} (use Go's reference date 2006-01-02 15:04:05)")
    return result


def _check_results(task: Task, field: str) -> None:
    names: set[str] = set()
    paths: set[str] = set()
    for index, result in enumerate(task.ResultPaths):
        where = f"{field}.ResultPaths[{index}]"
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z", result.Name):
            raise SpecError(f"{where}.Name", "must be letters, digits, '.', '_' or '-'")
        if result.Name in {"stdout", "stderr", "exitCode"} or result.Name in names:
            raise SpecError(f"{where}.Name", f"{result.Name!r} is reserved or used twice")
        _check_abs_path(result.Path, f"{where}.Path")
        if result.Path in paths:
            raise SpecError(f"{where}.Path", f"{result.Path} is used twice")
        names.add(result.Name)
        paths.add(result.Path)


def _check_abs_path(path: str, field: str) -> None:
    if not path.startswith("/"):
        raise SpecError(field, "must be an absolute path")
    if any(part == ".." for part in path.split("/")) or "\0" in path:
        raise SpecError(field, "must not contain '..' or NUL")


def _check_engine(task: Task, field: str) -> None:
    engine = task.Engine
    where = f"{field}.Engine"
    if engine.is_type(EngineType.DOCKER):
        engine.Type = EngineType.DOCKER
        docker = _build(DockerParams, engine.Params, f"{where}.Params")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*\Z", docker.Image) or len(docker.Image) > 512:
            raise SpecError(f"{where}.Params.Image", f"{docker.Image!r} is not an image reference")
        for index, item in enumerate(docker.EnvironmentVariables):
            key, sep, _ = item.partition("=")
            if not sep:
                raise SpecError(f"{where}.Params.EnvironmentVariables[{index}]", "must be KEY=VALUE")
            _check_env_key(key, f"{where}.Params.EnvironmentVariables[{index}]")
        if docker.WorkingDirectory:
            _check_abs_path(docker.WorkingDirectory, f"{where}.Params.WorkingDirectory")
        engine.Params = docker.model_dump()
    elif engine.is_type(EngineType.WASM):
        engine.Type = EngineType.WASM
        wasm = _build(WasmParams, engine.Params, f"{where}.Params")
        if wasm.EntryModule not in {source.Target for source in task.InputSources}:
            raise SpecError(f"{where}.Params.EntryModule", f"{wasm.EntryModule!r} must be the Target of an InputSource")
        if wasm.ImportModules:
            raise SpecError(f"{where}.Params.ImportModules", "linking several modules is not supported yet")
        engine.Params = wasm.model_dump()
    else:
        raise SpecError(f"{where}.Type", f"must be docker or wasm, not {engine.Type!r}")


def _check_publisher(task: Task, field: str) -> None:
    if task.Publisher is None or not task.Publisher.Type.strip():
        task.Publisher = SpecConfig(Type=PublisherType.S3MANAGED)
        return
    kind = next((t for t in PublisherType if task.Publisher.is_type(t)), None)
    if kind is None:
        raise SpecError(
            f"{field}.Publisher.Type", f"must be one of {', '.join(PublisherType)}, not {task.Publisher.Type!r}"
        )
    task.Publisher = SpecConfig(Type=kind.value)
    if kind is PublisherType.NOOP and task.ResultPaths:
        raise SpecError(f"{field}.Publisher.Type", "noop publishes nothing, so ResultPaths would be lost")


def _check_resources(resources: ResourcesConfig, field: str) -> None:
    checks = {"CPU": parse_cpu, "Memory": parse_bytes, "Disk": parse_bytes, "GPU": _parse_gpu}
    for name, parse in checks.items():
        value = getattr(resources, name).strip().lower().replace(" ", "")
        if value:
            try:
                parse(value)
            except ValueError as exc:
                raise SpecError(f"{field}.{name}", str(exc)) from None
        setattr(resources, name, value)
    if resources.GPU not in ("", "0"):
        raise SpecError(f"{field}.GPU", "GPU tasks are not supported yet")


def _parse_gpu(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number of GPUs")
    return int(text)
