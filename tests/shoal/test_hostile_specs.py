"""Hostile job specs: `load_document` and `parse_job` refuse them quickly, always as a `SpecError` whose `field`
names where the problem is (when there is a where), never with a crash (RecursionError, OverflowError,
ValueError, a segfault in libyaml) and never by doing what a YAML tag asks."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.documents import load_document
from shoal.errors import SpecError
from shoal.spec import parse_job


def docker_spec(**task: Any) -> dict[str, Any]:
    spec_task: dict[str, Any] = {"Name": "main", "Engine": {"Type": "docker", "Params": {"Image": "busybox:1.36"}}}
    spec_task.update(task)
    return {"Type": "batch", "Tasks": [spec_task]}


def refused(text: str | bytes) -> SpecError:
    """The error for a document, whether load_document or parse_job refuses it; anything else fails the test."""
    with pytest.raises(SpecError) as raised:
        parse_job(load_document(text))
    return raised.value


def quickly(seconds: float = 2.0) -> Any:
    class Timer:
        def __enter__(self) -> None:
            self.started = time.monotonic()

        def __exit__(self, *exc: object) -> None:
            elapsed = time.monotonic() - self.started
            assert elapsed < seconds, f"took {elapsed:.1f}s"

    return Timer()


# -- YAML aliases ------------------------------------------------------------------------------------------

BILLION_LAUGHS = "\n".join([
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)),
    "Type: batch",
    "Tasks: [{Engine: {Type: docker, Params: {Image: busybox}}, Meta: {x: *i}}]",
])


def test_a_billion_laughs_is_refused_quickly() -> None:
    with quickly(1):
        error = refused(BILLION_LAUGHS)
    assert "aliases" in error.message


def test_a_quadratic_merge_key_bomb_is_refused_quickly() -> None:
    keys = ", ".join(f"k{i}: v" for i in range(2000))
    merges = "\n".join(f"m{i}: {{<<: *base, own: {i}}}" for i in range(2000))
    with quickly(5):
        error = refused(f"base: &base {{{keys}}}\n{merges}\n")
    assert "aliases" in error.message


@pytest.mark.parametrize("text", [
    "a: &a [*a]",
    "a: &a {b: *a}",
    "a: &a {b: [1, {c: *a}]}",
    "&top {Type: batch, Tasks: [{Engine: {Type: docker, Params: {Image: busybox}}, Meta: *top}]}",
], ids=["list", "mapping", "nested", "whole-document"])
def test_an_alias_referring_to_itself_is_refused(text: str) -> None:
    with quickly(1):
        error = refused(text)
    assert "refers to itself" in error.message


def test_a_few_ordinary_anchors_are_fine() -> None:
    text = """
x-image: &image busybox:1.36
x-env: &env {GREETING: hi, TARGET: world}
Type: batch
Tasks:
  - Name: main
    Engine: {Type: docker, Params: {Image: *image}}
    Env: {<<: *env, EXTRA: "1"}
"""
    job, _ = parse_job(load_document(text))
    assert job.task.Engine.Params["Image"] == "busybox:1.36"
    assert job.task.Env == {"GREETING": "hi", "TARGET": "world", "EXTRA": "1"}


# -- nesting -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "[" * 10_000,
    "[" * 10_000 + "]" * 10_000,
    '{"a":' * 10_000 + "1" + "}" * 10_000,
    "a: " + "[" * 10_000 + "]" * 10_000,
    "a: " + "[" * 10_000,
    "- " * 10_000 + "x",
    "".join(" " * i + f"k{i}:\n" for i in range(2000)) + " " * 2000 + "x\n",
], ids=["json-unclosed", "json", "json-objects", "yaml-flow", "yaml-flow-unclosed", "yaml-block-seq",
        "yaml-block-map"])
def test_deep_nesting_is_a_spec_error(text: str) -> None:
    with quickly(2):
        error = refused(text)
    assert "nested" in error.message or "not valid" in error.message


def test_deep_nesting_inside_a_valid_spec_names_the_field() -> None:
    spec = docker_spec()
    deep: Any = "x"
    for _ in range(150):
        deep = [deep]
    spec["Tasks"][0]["Engine"]["Params"]["Extra"] = deep
    error = refused(json.dumps(spec))
    assert error.field.startswith("Tasks[0].Engine.Params.Extra[0][0]")
    assert "nested more than" in error.message


def test_nesting_that_crashed_libyaml_is_refused_in_a_fresh_interpreter() -> None:
    """Past ~40k levels libyaml's composer overflowed the C stack (a segfault, the gateway gone) after taking
    quadratic time; run where a crash cannot take pytest down."""
    code = (
        "from shoal.documents import load_document\n"
        "from shoal.errors import SpecError\n"
        "for text in ['a: ' + '[' * 200_000 + ']' * 200_000, '- ' * 200_000 + 'x']:\n"
        "    try:\n"
        "        load_document(text)\n"
        "    except SpecError as exc:\n"
        "        print('SpecError', exc.message)\n"
    )
    with quickly(10):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("SpecError the spec is nested more than 100 deep") == 2


# -- YAML tags ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:pathlib.Path {{}}",
    "!custom {{a: 1}}",
])
def test_python_and_unknown_tags_are_refused_and_never_run(tag: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"Type: batch\nName: {tag.format(marker=marker)}\nTasks: []\n"
    error = refused(text)
    assert "not valid JSON or YAML" in error.message
    assert not marker.exists()


@pytest.mark.parametrize(("text", "field"), [
    ("Type: batch\nName: !!binary aGVsbG8=\n", "Name"),
    ("Type: batch\nLabels: !!set {a, b}\n", "Labels"),
    ("Type: batch\nLabels: {when: !!timestamp 2024-01-01T10:00:00Z}\n", "Labels.when"),
    ("Type: batch\nTasks: !!omap [{a: 1}]\n", "Tasks[0]"),
])
def test_yaml_only_types_are_refused_naming_the_field(text: str, field: str) -> None:
    error = refused(text)
    assert error.field == field
    assert "quote it" in error.message


@pytest.mark.parametrize("text", ['a: !!bool "maybe"', 'a: !!int ""', 'a: !!float ""', 'a: !!int "abc"',
                                  'a: !!timestamp "yesterday"', "a: !!int 0x", "? [a]\n: 1", "---\na: 1\n---\nb: 2"])
def test_malformed_explicit_tags_are_spec_errors(text: str) -> None:
    error = refused(text)
    assert "not valid JSON or YAML" in error.message


def test_an_unquoted_date_stays_text() -> None:
    """As in Go, where Bacalhau reads it into a string field; PyYAML would make it a datetime.date."""
    text = """
Type: batch
Labels: {release: 2024-01-31}
Tasks:
  - Engine: {Type: docker, Params: {Image: busybox}}
    InputSources:
      - Target: /inputs
        Source:
          Type: s3
          Params: {Bucket: my-bucket, Partition: {Type: date, DateFormat: 2006-01-02}}
"""
    job, _ = parse_job(load_document(text))
    assert job.Labels == {"release": "2024-01-31"}
    assert job.task.InputSources[0].Source.Params["Partition"]["DateFormat"] == "2006-01-02"


# -- NUL and control characters ----------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "field"), [
    ({"Env": {"GREETING": "hi\u0000there"}}, "Tasks[0].Env.GREETING"),
    ({"Engine": {"Type": "docker", "Params": {"Image": "busybox\u0000:1"}}}, "Tasks[0].Engine.Params.Image"),
    ({"Engine": {"Type": "docker", "Params": {"Image": "busybox", "Parameters": ["a\u0000"]}}},
     "Tasks[0].Engine.Params.Parameters[0]"),
    ({"Engine": {"Type": "docker", "Params": {"Image": "busybox", "EnvironmentVariables": ["A=\u0000"]}}},
     "Tasks[0].Engine.Params.EnvironmentVariables[0]"),
    ({"ResultPaths": [{"Name": "out", "Path": "/outputs\u0000/x"}]}, "Tasks[0].ResultPaths[0].Path"),
    ({"InputSources": [{"Target": "/inputs/x", "Source": {"Type": "urlDownload",
                                                          "Params": {"URL": "https://example.com/\u0000"}}}]},
     "Tasks[0].InputSources[0].Source.Params.URL"),
    ({"Name": "ma\u0000in"}, "Tasks[0].Name"),
])
@pytest.mark.parametrize("syntax", ["json", "yaml"])
def test_nul_anywhere_is_refused_naming_the_field(task: dict[str, Any], field: str, syntax: str) -> None:
    spec = docker_spec(**task)
    # JSON is valid YAML: the same text with a leading comment is read by the YAML path (a "\0" escape there)
    text = json.dumps(spec) if syntax == "json" else "# yaml\n" + json.dumps(spec)
    error = refused(text)
    assert error.field == field
    assert "NUL" in error.message


def test_a_lone_surrogate_is_refused_naming_the_field() -> None:
    error = refused(json.dumps(docker_spec(Env={"GREETING": "hi\ud800"})))  # written as the escape \ud800
    assert error.field == "Tasks[0].Env.GREETING"
    assert "lone surrogate" in error.message


@pytest.mark.parametrize("key", ["FOO\n", "FOO\u0000", "\u001b[2JFOO", "FOO\u202e", "FOO\u200b", "FOO\r"])
def test_env_keys_with_control_or_invisible_characters_are_refused(key: str) -> None:
    error = refused(json.dumps(docker_spec(Env={key: "x"})))
    assert error.field == "Tasks[0].Env"
    assert repr(key)[1:-1] in error.message  # shown escaped, never raw on a terminal


def test_control_characters_in_values_are_not_a_crash() -> None:
    """Newlines and tabs are ordinary in commands; other control characters reach the task as given."""
    job, _ = parse_job(load_document(json.dumps(docker_spec(
        Env={"SCRIPT": "line 1\nline 2\tend\u001b[0m"},
        Engine={"Type": "docker", "Params": {"Image": "busybox", "Parameters": ["sh", "-c", "echo a\necho b"]}},
    ))))
    assert job.task.Env["SCRIPT"].startswith("line 1\n")


@pytest.mark.parametrize("path", ["/inputs/\u202etxt.exe", "/inputs/zero\u200bwidth", "/inputs/e\u0301",
                                  "/inputs/\U0001f600", "/inputs/\ufeffbom", "/inputs/\u2028sep"])
def test_unicode_tricks_in_paths_do_not_crash(path: str) -> None:
    spec = docker_spec(InputSources=[{"Target": path, "Source": {"Type": "urlDownload",
                                                                 "Params": {"URL": "https://example.com/x"}}}],
                       ResultPaths=[{"Name": "out", "Path": "/outputs" + path.removeprefix("/inputs")}])
    try:
        job, _ = parse_job(load_document(json.dumps(spec)))
    except SpecError as error:  # refusing them is fine too, naming where
        assert error.field.startswith("Tasks[0].")
    else:
        assert json.loads(json.dumps(job.wire()))["Tasks"][0]["InputSources"][0]["Target"] == path


def test_invalid_utf8_is_a_spec_error() -> None:
    error = refused(b'{"Type": "batch", "Name": "\xff\xfe\xfa"}')
    assert "not valid JSON or YAML" in error.message


# -- sizes -------------------------------------------------------------------------------------------------


def test_a_large_env_is_read_without_a_crash() -> None:
    env = {f"KEY_{i}": "v" * 10 for i in range(50_000)}
    with quickly(5):
        job, _ = parse_job(load_document(json.dumps(docker_spec(Env=env))))
    assert len(job.task.Env) == 50_000


@pytest.mark.parametrize("syntax", ["json", "yaml"])
def test_a_document_with_too_many_values_is_refused_quickly(syntax: str) -> None:
    env = {f"KEY_{i}": "v" for i in range(250_000)}
    text = json.dumps(docker_spec(Env=env)) if syntax == "json" else "# yaml\n" + json.dumps(docker_spec(Env=env))
    with quickly(5):
        error = refused(text)
    assert "more than 200000 values" in error.message


def test_a_long_string_is_fine() -> None:
    job, _ = parse_job(load_document(json.dumps(docker_spec(Env={"BLOB": "x" * (4 << 20)}))))
    assert len(job.task.Env["BLOB"]) == 4 << 20


# -- URLs with credentials ---------------------------------------------------------------------------------


def test_a_url_with_credentials_is_accepted_without_a_crash() -> None:
    """Today such a URL is accepted as given (see the report: refusing userinfo would be safer)."""
    url = "https://user:s3cr3t@example.com/data.csv"
    spec = docker_spec(InputSources=[{"Target": "/inputs/d", "Source": {"Type": "urlDownload",
                                                                        "Params": {"URL": url}}}])
    job, _ = parse_job(load_document(json.dumps(spec)))
    assert job.task.InputSources[0].Source.Params["URL"] == url


def test_a_refused_url_with_credentials_is_not_echoed() -> None:
    spec = docker_spec(InputSources=[{"Target": "/inputs/d", "Source": {"Type": "urlDownload",
                                                                        "Params": {"URL": "ftp://user:s3cr3t@host/x"}}}])
    error = refused(json.dumps(spec))
    assert error.field == "Tasks[0].InputSources[0].Source.Params.URL"
    assert "s3cr3t" not in str(error)


# -- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "field"), [
    ('{"Count": 1e309}', "Count"),
    ('{"Count": -1e309}', "Count"),
    ('{"Count": NaN}', "Count"),
    ('{"Count": Infinity}', "Count"),
    ("Count: .inf", "Count"),
    ("Count: 1.0e+309", "Count"),
    ('{"Count": 1' + "0" * 5000 + "}", "Count"),
    ("Count: -1" + "0" * 5000, "Count"),
    ('{"Count": 100000000000000000000000000000}', "Count"),
    ('{"Priority": 9223372036854775808}', "Priority"),
    ('{"Tasks": [{"Timeouts": {"ExecutionTimeout": 1e309}}]}', "Tasks[0].Timeouts.ExecutionTimeout"),
    ('{"Tasks": [{"Timeouts": {"QueueTimeout": 1' + "0" * 5000 + "}}]}", "Tasks[0].Timeouts.QueueTimeout"),
    ('{"Tasks": [{"Timeouts": {"TotalTimeout": 1' + "0" * 30 + "}}]}", "Tasks[0].Timeouts.TotalTimeout"),
    ("Tasks: [{Timeouts: {ExecutionTimeout: 1" + "0" * 5000 + "}}]", "Tasks[0].Timeouts.ExecutionTimeout"),
])
def test_numbers_out_of_range_are_spec_errors_naming_the_field(text: str, field: str) -> None:
    with quickly(1):
        error = refused(text)
    assert error.field == field
    assert "number" in error.message


@pytest.mark.parametrize(("count", "field"), [(1e20, "Count"), ("1e309", "Count"), (10**30, "Count"),
                                              (float("inf"), "Count"), (-(10**30), "Count")])
def test_numbers_out_of_range_given_to_parse_job_directly_name_the_field(count: Any, field: str) -> None:
    spec = docker_spec()
    spec["Count"] = count
    with pytest.raises(SpecError) as raised:
        parse_job(spec)
    assert raised.value.field == field


@pytest.mark.parametrize(("text", "field"), [
    ('{"Tasks": [{"Timeouts": {"ExecutionTimeout": "1e309"}}]}', "Tasks[0].Timeouts.ExecutionTimeout"),
    ('{"Tasks": [{"Timeouts": {"ExecutionTimeout": "' + "9" * 5000 + '"}}]}', "Tasks[0].Timeouts.ExecutionTimeout"),
    ('{"Tasks": [{"Resources": {"CPU": "1e309"}}]}', "Tasks[0].Resources.CPU"),
    ('{"Tasks": [{"Resources": {"CPU": "nan"}}]}', "Tasks[0].Resources.CPU"),
    ('{"Tasks": [{"Resources": {"Memory": "1e309"}}]}', "Tasks[0].Resources.Memory"),
    ('{"Tasks": [{"Resources": {"GPU": "' + "9" * 5000 + '"}}]}', "Tasks[0].Resources.GPU"),
])
def test_numbers_in_strings_are_spec_errors_naming_the_field(text: str, field: str) -> None:
    spec = docker_spec()
    spec["Tasks"][0].update(json.loads(text)["Tasks"][0])
    error = refused(json.dumps(spec))
    assert error.field == field


# -- every hostile document: a SpecError or a job, nothing else ---------------------------------------------

SWEEP = [
    "", " ", "null", "[]", "42", '"a string"', "{}", "---", "...", "\ufeff{}", "%YAML 1.1\n---\na: 1",
    "\u0000", "a: \u0007", "{a: [}", "a: b: c", "&a", "*a", "a: *undefined", "!!", "? ? ?",
    '{"Type": "batch", "Tasks": null}', '{"Type": "batch", "Tasks": [null]}', '{"Type": "batch", "Tasks": [[]]}',
    '{"Type": ["batch"], "Tasks": [{}]}', '{"Type": "batch", "Tasks": [{"Engine": "docker"}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": null}}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": ["busybox"]}}}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}, "Env": []}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}, "Env": {"A": null}}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}, "Env": {"A": {}}}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}, "InputSources": {}}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}, '
    '"InputSources": [{"Target": "/i", "Source": {"Type": "s3", "Params": {"Bucket": "abc", '
    '"Partition": {"Type": "substring", "StartIndex": 1e400}}}}]}]}',
    '{"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}, '
    '"InputSources": [{"Target": "/i", "Source": {"Type": "inline", "Params": {"URL": "data:,' + "x" * 100 + '"}}}]}]}',
    '{"Type": "batch", "Count": true, "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}}]}',
    '{"Type": "batch", "Count": "  7  ", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "b"}}}]}',
    '{"type": "batch", "TYPE": "ops", "tasks": [{"engine": {"type": "docker", "params": {"image": "b"}}}]}',
]


@pytest.mark.parametrize("text", SWEEP)
def test_every_hostile_document_is_a_spec_error_or_a_job(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_job(load_document(text))


# -- parse_job given a mapping directly ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://[::1/x", "https://host:99999999/x"])
def test_an_unparsable_url_is_a_spec_error(url: str) -> None:
    spec = docker_spec(InputSources=[{"Target": "/inputs/d", "Source": {"Type": "urlDownload",
                                                                        "Params": {"URL": url}}}])
    with pytest.raises(SpecError) as raised:
        parse_job(spec)
    assert raised.value.field == "Tasks[0].InputSources[0].Source.Params.URL"


def test_a_memory_quantity_too_large_for_a_float_is_a_spec_error() -> None:
    """int(float("9" * 5000)) was an OverflowError; shoal/resources.py now bounds quantities."""
    with pytest.raises(SpecError) as raised:
        parse_job(docker_spec(Resources={"Memory": "9" * 5000}))
    assert raised.value.field == "Tasks[0].Resources.Memory"


@pytest.mark.parametrize(("task", "field"), [
    ({"Env": {"FOO\n": "x"}}, "Tasks[0].Env"),
    ({"Engine": {"Type": "docker", "Params": {"Image": "busybox\n"}}}, "Tasks[0].Engine.Params.Image"),
    ({"ResultPaths": [{"Name": "out\n", "Path": "/outputs"}]}, "Tasks[0].ResultPaths[0].Name"),
    ({"Engine": {"Type": "docker", "Params": {"Image": "b", "EnvironmentVariables": ["A\n=1"]}}},
     "Tasks[0].Engine.Params.EnvironmentVariables[0]"),
], ids=["env-key", "image", "result-name", "docker-env-key"])
def test_a_final_newline_given_to_parse_job_directly_is_refused(task: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_job(docker_spec(**task))
    assert raised.value.field == field


def test_nul_given_to_parse_job_directly_is_refused() -> None:
    with pytest.raises(SpecError):
        parse_job(docker_spec(Env={"GREETING": "a\u0000b"}))


def test_a_timeout_beyond_int64_given_to_parse_job_directly_is_refused() -> None:
    with pytest.raises(SpecError) as raised:
        parse_job(docker_spec(Timeouts={"ExecutionTimeout": 10**30}))
    assert raised.value.field == "Tasks[0].Timeouts.ExecutionTimeout"
