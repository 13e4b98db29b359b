"""The job spec parser (shoal/spec.py) and resource quantities (shoal/resources.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from shoal.documents import load_document
from shoal.errors import SpecError
from shoal.resources import parse_bytes, parse_cpu
from shoal.spec import go_date_format, parse_job

WASM_DATA = "data:application/wasm;base64,AGFzbQEAAAA="

# Bacalhau's testdata/jobs/docker-hello.yaml style: every key lowercase.
LOWERCASE_YAML = """
name: hello
type: batch
count: 2
tasks:
  - name: main
    engine:
      type: docker
      params:
        image: busybox:1.36
        entrypoint: ["/bin/sh", "-c"]
        parameters: ["echo hello > /outputs/hello.txt"]
        environmentVariables: ["GREETING=hi"]
        workingDirectory: /work
    inputSources:
      - target: /inputs/data.csv
        source:
          type: urldownload
          params:
            url: https://example.com/data.csv
    resultPaths:
      - name: outputs
        path: /outputs
    resources:
      cpu: 500M
      memory: 512 Mb
    timeouts:
      executionTimeout: 60
"""


def docker_spec() -> dict[str, Any]:
    return {
        "Type": "batch",
        "Tasks": [{"Name": "main", "Engine": {"Type": "docker", "Params": {"Image": "busybox:1.36"}}}],
    }


def wasm_spec() -> dict[str, Any]:
    return {
        "Type": "batch",
        "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/main.wasm"}},
            "InputSources": [{"Target": "/app/main.wasm", "Source": {"Type": "inline", "Params": {"URL": WASM_DATA}}}],
        }],
    }


def field_of(spec: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        parse_job(spec)
    return caught.value.field


# -- accepted specs ---------------------------------------------------------------------------------------


def test_lowercase_yaml_is_accepted_and_written_back_in_pascal_case() -> None:
    job, warnings = parse_job(load_document(LOWERCASE_YAML))
    wire = job.wire()

    assert warnings == []
    assert wire["Name"] == "hello"
    assert wire["Type"] == "batch"
    assert wire["Count"] == 2
    assert wire["Namespace"] == "default"
    [task] = wire["Tasks"]
    assert task["Name"] == "main"
    assert task["Engine"] == {
        "Type": "docker",
        "Params": {
            "Image": "busybox:1.36",
            "Entrypoint": ["/bin/sh", "-c"],
            "Parameters": ["echo hello > /outputs/hello.txt"],
            "EnvironmentVariables": ["GREETING=hi"],
            "WorkingDirectory": "/work",
        },
    }
    assert task["InputSources"] == [{
        "Source": {"Type": "urlDownload", "Params": {"URL": "https://example.com/data.csv"}},
        "Alias": "",
        "Target": "/inputs/data.csv",
    }]
    assert task["ResultPaths"] == [{"Name": "outputs", "Path": "/outputs"}]
    # values are lowercased and spaces removed, as Bacalhau does
    assert task["Resources"]["CPU"] == "500m"
    assert task["Resources"]["Memory"] == "512mb"
    assert task["Timeouts"]["ExecutionTimeout"] == 60

    def keys(value: Any) -> list[str]:
        """Every key of the spec's own objects (not the free-form maps such as Env, Labels, Meta)."""
        if isinstance(value, list):
            return [k for item in value for k in keys(item)]
        if not isinstance(value, dict):
            return []
        return [k for key, item in value.items() for k in [key, *([] if key in ("Env", "Meta", "Labels") else
                                                                    keys(item))]]

    assert [key for key in keys(wire) if not key[0].isupper()] == []


def test_json_document_is_read_like_yaml() -> None:
    assert load_document('{"Type": "batch", "Count": 3}') == {"Type": "batch", "Count": 3}


def test_broken_document_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="not valid JSON or YAML"):
        load_document('{"Type": "batch", "Tasks": [')


def test_count_absent_is_one() -> None:
    job, _ = parse_job(docker_spec())
    assert job.Count == 1
    assert job.wire()["Count"] == 1


def test_explicit_count_zero_is_kept() -> None:
    job, _ = parse_job(docker_spec() | {"Count": 0})
    assert job.Count == 0
    assert job.wire()["Count"] == 0


def test_publisher_absent_is_s3managed() -> None:
    job, _ = parse_job(docker_spec())
    assert job.wire()["Tasks"][0]["Publisher"] == {"Type": "s3managed", "Params": {}}


def test_publisher_type_is_matched_case_insensitively() -> None:
    spec = docker_spec()
    spec["Tasks"][0]["Publisher"] = {"Type": " NoOp "}
    job, _ = parse_job(spec)
    assert job.wire()["Tasks"][0]["Publisher"]["Type"] == "noop"


def test_wasm_spec_defaults() -> None:
    job, _ = parse_job(wasm_spec())
    params = job.wire()["Tasks"][0]["Engine"]["Params"]
    assert params == {"EntryModule": "/app/main.wasm", "Entrypoint": "_start", "Parameters": [], "ImportModules": []}


def test_server_set_fields_are_dropped_with_warnings() -> None:
    spec = docker_spec() | {
        "ID": "j-mine",
        "state": {"StateType": "Completed"},
        "Version": 7,
        "CreateTime": 1,
    }
    job, warnings = parse_job(spec)
    assert len(warnings) == 4
    for name in ("ID", "State", "Version", "CreateTime"):
        assert any(warning.startswith(name) and "ignored" in warning for warning in warnings), (name, warnings)
    wire = job.wire()
    for name in ("ID", "State", "Version", "CreateTime"):
        assert name not in wire


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(SpecError, match="mapping"):
        parse_job(["batch"])


def test_valid_constraints_are_normalised() -> None:
    spec = docker_spec() | {"Constraints": [
        {"key": "region", "operator": "IN", "values": ["eu", "us"]},
        {"Key": "gpu", "Operator": "exists"},
        {"Key": "zone", "Operator": "=", "Values": ["a"]},
    ]}
    job, _ = parse_job(spec)
    assert [c["Operator"] for c in job.wire()["Constraints"]] == ["in", "exists", "="]


# -- refused specs: the error names the exact field -----------------------------------------------------

Edit = Callable[[dict[str, Any]], Any]


def _task(spec: dict[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = spec["Tasks"][0]
    return task


def _params(spec: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = _task(spec)["Engine"]["Params"]
    return params


def _inline(target: str, url: str = WASM_DATA, kind: str = "inline") -> dict[str, Any]:
    return {"Target": target, "Source": {"Type": kind, "Params": {"URL": url}}}


def _source(kind: str, **params: Any) -> list[dict[str, Any]]:
    return [{"Target": "/in", "Source": {"Type": kind, "Params": params}}]


INVALID: list[tuple[str, Callable[[], dict[str, Any]], Edit, str]] = [
    ("missing Tasks", docker_spec, lambda s: s.pop("Tasks"), "Tasks"),
    ("two tasks", docker_spec, lambda s: s["Tasks"].append(copy.deepcopy(s["Tasks"][0])), "Tasks"),
    ("no tasks", docker_spec, lambda s: s.update(Tasks=[]), "Tasks"),
    ("unknown Type", docker_spec, lambda s: s.update(Type="cron"), "Type"),
    ("ops with Count 2", docker_spec, lambda s: s.update(Type="ops", Count=2), "Count"),
    ("daemon with Count 3", docker_spec, lambda s: s.update(Type="daemon", Count=3), "Count"),
    ("negative Count", docker_spec, lambda s: s.update(Count=-1), "Count"),
    ("missing Engine", docker_spec, lambda s: _task(s).pop("Engine"), "Tasks[0].Engine"),
    ("unknown engine type", docker_spec, lambda s: _task(s)["Engine"].update(Type="podman"), "Tasks[0].Engine.Type"),
    ("docker without Image", docker_spec, lambda s: _params(s).pop("Image"), "Tasks[0].Engine.Params.Image"),
    ("bad image reference", docker_spec, lambda s: _params(s).update(Image="not an image!"),
     "Tasks[0].Engine.Params.Image"),
    ("env key lowercase", docker_spec, lambda s: _task(s).update(Env={"greeting": "hi"}), "Tasks[0].Env.greeting"),
    ("env key SHOAL_ prefix", docker_spec, lambda s: _task(s).update(Env={"SHOAL_JOB_ID": "x"}),
     "Tasks[0].Env.SHOAL_JOB_ID"),
    ("env key BACALHAU_ prefix", docker_spec, lambda s: _task(s).update(Env={"BACALHAU_JOB_ID": "x"}),
     "Tasks[0].Env.BACALHAU_JOB_ID"),
    ("empty env value", docker_spec, lambda s: _task(s).update(Env={"OK": "1", "EMPTY": ""}), "Tasks[0].Env.EMPTY"),
    ("EnvironmentVariables item without =", docker_spec,
     lambda s: _params(s).update(EnvironmentVariables=["A=1", "NOEQUALS"]),
     "Tasks[0].Engine.Params.EnvironmentVariables[1]"),
    ("EnvironmentVariables reserved key", docker_spec,
     lambda s: _params(s).update(EnvironmentVariables=["BACALHAU_NODE_ID=n"]),
     "Tasks[0].Engine.Params.EnvironmentVariables[0]"),
    ("relative WorkingDirectory", docker_spec, lambda s: _params(s).update(WorkingDirectory="work"),
     "Tasks[0].Engine.Params.WorkingDirectory"),
    ("relative ResultPath Path", docker_spec,
     lambda s: _task(s).update(ResultPaths=[{"Name": "out", "Path": "outputs"}]), "Tasks[0].ResultPaths[0].Path"),
    ("duplicate ResultPath Name", docker_spec,
     lambda s: _task(s).update(ResultPaths=[{"Name": "out", "Path": "/a"}, {"Name": "out", "Path": "/b"}]),
     "Tasks[0].ResultPaths[1].Name"),
    ("duplicate ResultPath Path", docker_spec,
     lambda s: _task(s).update(ResultPaths=[{"Name": "a", "Path": "/out"}, {"Name": "b", "Path": "/out"}]),
     "Tasks[0].ResultPaths[1].Path"),
    ("reserved ResultPath name stdout", docker_spec,
     lambda s: _task(s).update(ResultPaths=[{"Name": "stdout", "Path": "/out"}]), "Tasks[0].ResultPaths[0].Name"),
    ("InputSource relative Target", docker_spec,
     lambda s: _task(s).update(InputSources=[_inline("inputs/x")]), "Tasks[0].InputSources[0].Target"),
    ("InputSource Target with ..", docker_spec,
     lambda s: _task(s).update(InputSources=[_inline("/inputs/../etc")]), "Tasks[0].InputSources[0].Target"),
    ("duplicate input targets", docker_spec,
     lambda s: _task(s).update(InputSources=[_inline("/inputs/x"), _inline("/inputs/x")]),
     "Tasks[0].InputSources[1].Target"),
    ("urlDownload with a non-http URL", docker_spec,
     lambda s: _task(s).update(InputSources=[_inline("/in", "ftp://example.com/x", "urlDownload")]),
     "Tasks[0].InputSources[0].Source.Params.URL"),
    ("inline without a data: URL", docker_spec,
     lambda s: _task(s).update(InputSources=[_inline("/in", "https://example.com/x")]),
     "Tasks[0].InputSources[0].Source.Params.URL"),
    ("source without URL", docker_spec,
     lambda s: _task(s).update(InputSources=[{"Target": "/in", "Source": {"Type": "inline"}}]),
     "Tasks[0].InputSources[0].Source.Params.URL"),
    ("unknown source type", docker_spec,
     lambda s: _task(s).update(InputSources=[_inline("/in", "ipfs://QmX", "ipfs")]),
     "Tasks[0].InputSources[0].Source.Type"),
    ("s3 without Bucket", docker_spec, lambda s: _task(s).update(InputSources=_source("s3", Key="x")),
     "Tasks[0].InputSources[0].Source.Params.Bucket"),
    ("s3 bad bucket name", docker_spec, lambda s: _task(s).update(InputSources=_source("s3", Bucket="No_Such")),
     "Tasks[0].InputSources[0].Source.Params.Bucket"),
    ("s3 bad Filter", docker_spec, lambda s: _task(s).update(InputSources=_source("s3", Bucket="b1b", Filter="[")),
     "Tasks[0].InputSources[0].Source.Params.Filter"),
    ("s3 Endpoint not a URL", docker_spec,
     lambda s: _task(s).update(InputSources=_source("s3", Bucket="b1b", Endpoint="minio:9000")),
     "Tasks[0].InputSources[0].Source.Params.Endpoint"),
    ("s3 unknown partition type", docker_spec,
     lambda s: _task(s).update(InputSources=_source("s3", Bucket="b1b", Partition={"Type": "hash"})),
     "Tasks[0].InputSources[0].Source.Params.Partition.Type"),
    ("s3 regex partition without Pattern", docker_spec,
     lambda s: _task(s).update(InputSources=_source("s3", Bucket="b1b", Partition={"Type": "regex"})),
     "Tasks[0].InputSources[0].Source.Params.Partition.Pattern"),
    ("s3 substring with negative start", docker_spec,
     lambda s: _task(s).update(InputSources=_source("s3", Bucket="b1b", Partition={
         "Type": "substring", "StartIndex": -1, "EndIndex": 2})),
     "Tasks[0].InputSources[0].Source.Params.Partition.StartIndex"),
    ("s3 date partition with a strftime format", docker_spec,
     lambda s: _task(s).update(InputSources=_source("s3", Bucket="b1b", Partition={
         "Type": "date", "DateFormat": "%Y-%m-%d"})),
     "Tasks[0].InputSources[0].Source.Params.Partition.DateFormat"),
    ("local relative SourcePath", docker_spec,
     lambda s: _task(s).update(InputSources=_source("local", SourcePath="data")),
     "Tasks[0].InputSources[0].Source.Params.SourcePath"),
    ("managed key not from an upload", docker_spec,
     lambda s: _task(s).update(InputSources=_source("managed", Key="results/j-1/e-1.tar.gz")),
     "Tasks[0].InputSources[0].Source.Params.Key"),
    ("wasm EntryModule not an input Target", wasm_spec, lambda s: _params(s).update(EntryModule="/app/other.wasm"),
     "Tasks[0].Engine.Params.EntryModule"),
    ("wasm without EntryModule", wasm_spec, lambda s: _params(s).pop("EntryModule"),
     "Tasks[0].Engine.Params.EntryModule"),
    ("wasm ImportModules given", wasm_spec, lambda s: _params(s).update(ImportModules=["/app/main.wasm"]),
     "Tasks[0].Engine.Params.ImportModules"),
    ("bad CPU", docker_spec, lambda s: _task(s).update(Resources={"CPU": "lots"}), "Tasks[0].Resources.CPU"),
    ("bad Memory", docker_spec, lambda s: _task(s).update(Resources={"Memory": "12 parsecs"}),
     "Tasks[0].Resources.Memory"),
    ("bad Disk", docker_spec, lambda s: _task(s).update(Resources={"Disk": "a lot"}), "Tasks[0].Resources.Disk"),
    ("GPU 1", docker_spec, lambda s: _task(s).update(Resources={"GPU": "1"}), "Tasks[0].Resources.GPU"),
    ("negative ExecutionTimeout", docker_spec, lambda s: _task(s).update(Timeouts={"ExecutionTimeout": -1}),
     "Tasks[0].Timeouts.ExecutionTimeout"),
    ("ExecutionTimeout + QueueTimeout > TotalTimeout", docker_spec,
     lambda s: _task(s).update(Timeouts={"ExecutionTimeout": 60, "QueueTimeout": 60, "TotalTimeout": 100}),
     "Tasks[0].Timeouts.TotalTimeout"),
    ("unknown constraint operator", docker_spec,
     lambda s: s.update(Constraints=[{"Key": "a", "Operator": "=", "Values": ["1"]},
                                     {"Key": "b", "Operator": "like", "Values": ["x"]}]),
     "Constraints[1].Operator"),
    ("in with no values", docker_spec, lambda s: s.update(Constraints=[{"Key": "region", "Operator": "in"}]),
     "Constraints[0].Values"),
    ("exists with a value", docker_spec,
     lambda s: s.update(Constraints=[{"Key": "gpu", "Operator": "exists", "Values": ["yes"]}]),
     "Constraints[0].Values"),
    ("= with two values", docker_spec,
     lambda s: s.update(Constraints=[{"Key": "zone", "Operator": "=", "Values": ["a", "b"]}]),
     "Constraints[0].Values"),
    ("Network Type Host", docker_spec, lambda s: _task(s).update(Network={"Type": "Host"}), "Tasks[0].Network.Type"),
    ("noop publisher with ResultPaths", docker_spec,
     lambda s: _task(s).update(Publisher={"Type": "noop"}, ResultPaths=[{"Name": "out", "Path": "/out"}]),
     "Tasks[0].Publisher.Type"),
    ("unknown publisher", docker_spec, lambda s: _task(s).update(Publisher={"Type": "ipfs"}),
     "Tasks[0].Publisher.Type"),
    ("empty task name", docker_spec, lambda s: _task(s).update(Name="  "), "Tasks[0].Name"),
]


@pytest.mark.parametrize(("make", "edit", "field"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_spec_names_the_field(make: Callable[[], dict[str, Any]], edit: Edit, field: str) -> None:
    spec = make()
    parse_job(copy.deepcopy(spec))  # the spec is valid before the edit
    edit(spec)
    with pytest.raises(SpecError) as caught:
        parse_job(spec)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert caught.value.message


def test_invalid_lowercase_yaml_names_the_pascal_case_field() -> None:
    document = load_document(LOWERCASE_YAML.replace("        image: busybox:1.36\n", ""))
    assert field_of(document) == "Tasks[0].Engine.Params.Image"


# -- resource quantities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "cores"), [("500m", 0.5), ("2", 2.0), ("0.5", 0.5), ("1500m", 1.5), (" 250M ", 0.25)])
def test_parse_cpu(text: str, cores: float) -> None:
    assert parse_cpu(text) == pytest.approx(cores)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512Mb", 512_000_000), ("1Gi", 1_073_741_824), ("1gb", 1_000_000_000), ("1024", 1024), ("2Ki", 2048),
     ("1.5 GB", 1_500_000_000), ("3mi", 3 * 1024 * 1024)],
)
def test_parse_bytes(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "", "-1", "1 core", "m", "2cpu"])
def test_parse_cpu_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="CPU quantity"):
        parse_cpu(text)


@pytest.mark.parametrize("text", ["12 parsecs", "", "-5Mb", "Gb", "1Zb", "1.2.3"])
def test_parse_bytes_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="byte quantity"):
        parse_bytes(text)


@pytest.mark.parametrize(("kind", "count", "expected"), [
    ("ops", None, 0), ("ops", 1, 0), ("daemon", 0, 0), ("service", None, 1), ("service", 3, 3), ("batch", 2, 2),
])
def test_job_types_and_their_count(kind: str, count: int | None, expected: int) -> None:
    spec = {"Type": kind, "Tasks": [{"Name": "main", "Engine": {"Type": "docker", "Params": {"Image": "x"}}}]}
    if count is not None:
        spec["Count"] = count
    job, _ = parse_job(spec)
    assert (job.Type, job.Count) == (kind, expected)


def test_input_sources_are_normalised() -> None:
    spec = docker_spec()
    _task(spec)["InputSources"] = [
        {"target": "/a", "source": {"type": "S3", "params": {"bucket": "my-bucket", "key": "data/",
                                                             "partition": {"type": "Date", "dateFormat": "2006-01"}}}},
        {"Target": "/b", "Source": {"Type": "LOCAL", "Params": {"SourcePath": "/srv/data", "ReadWrite": True}}},
    ]
    job, _ = parse_job(spec)
    s3, local = job.wire()["Tasks"][0]["InputSources"]
    assert s3["Source"] == {"Type": "s3", "Params": {
        "Bucket": "my-bucket", "Key": "data/", "Filter": "", "Region": "", "Endpoint": "", "VersionID": "",
        "ChecksumSHA256": "", "Partition": {"Type": "date", "Pattern": "", "StartIndex": 0, "EndIndex": 0,
                                            "DateFormat": "2006-01"}}}
    assert local["Source"] == {"Type": "local", "Params": {"SourcePath": "/srv/data", "ReadWrite": True}}


@pytest.mark.parametrize(("layout", "strptime"), [
    ("2006-01-02", "%Y-%m-%d"), ("20060102", "%Y%m%d"), ("2006/01/02 15:04:05", "%Y/%m/%d %H:%M:%S"),
    ("02-Jan-06", "%d-%b-%y"),
])
def test_go_date_layouts(layout: str, strptime: str) -> None:
    assert go_date_format(layout) == strptime
