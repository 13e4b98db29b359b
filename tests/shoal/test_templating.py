"""Job templates (shoal/templating.py) and the named templates in templates/jobs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from shoal.documents import load_document
from shoal.errors import SpecError
from shoal.spec import parse_job
from shoal.templating import TEMPLATES_DIR, env_values, job_template, job_templates, render, variables

SAMPLE_VALUES = {
    "image": "shoal-test/busybox:1",
    "url": "https://example.com/books/moby-dick.txt",
    "module": "https://example.com/wasm/transform.wasm",
    "input": "https://example.com/data/table.csv",
    "args": "/inputs/table.csv, /outputs/result.csv",
    "bucket": "shoal-logs",
    "prefix": "2024/06/",
    "region": "eu-west-1",
    "endpoint": "http://127.0.0.1:9000",
    "partitions": "4",
}


def test_variables_are_replaced_with_or_without_spaces() -> None:
    text = "Image: {{.image}}\nName: '{{ .name }}'\nTag: {{   .image   }}\n"
    assert render(text, {"image": "busybox", "name": "n1"}) == "Image: busybox\nName: 'n1'\nTag: busybox\n"


def test_text_without_actions_is_returned_unchanged() -> None:
    text = "Parameters: ['echo $HOME }} {x} ${Y} {.z}']\n"
    assert render(text, {}) is text


def test_values_are_inserted_as_they_are_not_quoted_or_rendered_again() -> None:
    rendered = render("Value: {{.v}}\n", {"v": "a: {{.other}}"})
    assert rendered == "Value: a: {{.other}}\n"
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(rendered)  # quoting is the template author's job
    assert yaml.safe_load(render('Value: "{{.v}}"\n', {"v": "a: b"})) == {"Value": "a: b"}


def test_trim_markers_remove_the_whitespace_beside_the_action() -> None:
    assert render("a  \n {{- .x -}} \n  b", {"x": "X"}) == "aXb"
    assert render("{{ .n }} - {{ .n }}", {"n": "1"}) == "1 - 1"


def test_a_dash_without_a_space_is_not_a_trim_marker() -> None:
    with pytest.raises(SpecError, match=re.escape("line 1: {{-.x}} is not a template action")):
        render("a {{-.x}}", {"x": "X"})


def test_comments_and_string_literals() -> None:
    text = '{{/* a comment with }} inside */}}a{{"{{.x}}"}}b{{`}}`}}c{{ "tab\\tquote\\"" }}'
    assert render(text, {}) == 'a{{.x}}b}}ctab\tquote"'


def test_a_missing_variable_is_an_error_naming_it_and_its_line() -> None:
    with pytest.raises(SpecError) as caught:
        render("Type: batch\nImage: {{.image}}\n", {"url": "x"})
    message = str(caught.value)
    assert '"image" (line 2)' in message
    assert "-V image=VALUE" in message


def test_every_missing_variable_is_named() -> None:
    with pytest.raises(SpecError) as caught:
        render("{{.a}}\n{{.b}} {{.a}}\n{{.c}}", {"b": "given"})
    message = str(caught.value)
    assert '"a" (line 1)' in message and '"c" (line 3)' in message
    assert '"b"' not in message


def test_an_empty_value_is_a_value() -> None:
    assert render("Endpoint: '{{.endpoint}}'", {"endpoint": ""}) == "Endpoint: ''"


@pytest.mark.parametrize(("text", "wanted"), [
    ("a: 1\nb: {{ foo }}\n", "line 2: {{ foo }} is not a template action Shoal supports"),
    ("{{ foo }}", "did you mean {{.foo}}?"),
    ("x: {{ .a.b }}", "line 1: {{ .a.b }} is not a template action"),
    ("x: {{ . }}", "line 1: {{ . }} is not a template action"),
    ('x: {{ printf "%s" .a }}', "line 1: {{ printf \"%s\" .a }} is not a template action"),
    ("x: 1\n\ny: {{ .a\n", "line 3: the template action {{ is never closed"),
    ('x: {{ "abc }}', "line 1: a quoted string in a template action is never closed"),
    ("x: {{/* abc }}", "line 1: the template comment /* is never closed"),
])
def test_an_unsupported_or_broken_action_is_an_error_with_its_line(text: str, wanted: str) -> None:
    with pytest.raises(SpecError) as caught:
        render(text, {"a": "1"})
    assert wanted in str(caught.value)


def test_variables_lists_names_in_order_of_first_use() -> None:
    assert variables("{{.b}} {{/* {{.z}} */}} {{ .a }} {{.b}} {{`{{.y}}`}}") == ["b", "a"]
    assert variables("no actions") == []


def test_env_values_match_names_anywhere_and_star_means_all() -> None:
    environ = {"SHOAL_GREETING": "hi", "GREETING_SHOAL": "ho", "HOME": "/root"}
    assert env_values("^SHOAL_", environ) == {"SHOAL_GREETING": "hi"}
    assert env_values("GREETING", environ) == {"SHOAL_GREETING": "hi", "GREETING_SHOAL": "ho"}
    assert env_values("*", environ) == environ
    assert env_values(".*", environ) == environ
    assert env_values("^NOPE$", environ) == {}
    with pytest.raises(re.error):
        env_values("(", environ)


def test_named_templates_are_listed_with_descriptions_and_variables() -> None:
    templates = {template.name: template for template in job_templates()}
    assert set(templates) == {"word-count", "s3-partitioned", "wasm-transform"}
    for template in templates.values():
        assert template.description and not template.description.startswith("#")
    assert sorted(templates["word-count"].variables) == ["image", "url"]
    assert sorted(templates["wasm-transform"].variables) == ["args", "input", "module"]
    assert sorted(templates["s3-partitioned"].variables) == [
        "bucket", "endpoint", "image", "partitions", "prefix", "region"]


def test_a_template_is_loaded_by_name_and_an_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    assert job_template("word-count").text == (TEMPLATES_DIR / "word-count.yaml").read_text()
    with pytest.raises(SpecError, match=r"no job template named 'nope' \(the templates are: s3-partitioned, "
                                        r"wasm-transform, word-count\)"):
        job_template("nope")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "secret.yaml").write_text("Type: batch\n")
    with pytest.raises(SpecError, match=re.escape("no job template named '../secret'")):
        job_template("../secret", tmp_path / "jobs")
    (tmp_path / "jobs" / "plain.yaml").write_text("Type: batch\n")
    assert job_template("plain", tmp_path / "jobs").description == ""


@pytest.mark.parametrize("path", sorted(TEMPLATES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_template_renders_to_a_yaml_job_and_needs_all_its_variables(path: Path) -> None:
    template = job_template(path.stem)
    spec = load_document(render(template.text, SAMPLE_VALUES))
    assert isinstance(spec, dict) and spec["Type"] == "batch" and len(spec["Tasks"]) == 1
    assert "{{" not in yaml.safe_dump(spec)
    with pytest.raises(SpecError) as caught:
        render(template.text, {})
    for name in template.variables:
        assert f'"{name}"' in str(caught.value)


def test_word_count_renders_to_a_valid_docker_job() -> None:
    job, warnings = parse_job(load_document(render(job_template("word-count").text, SAMPLE_VALUES)))
    assert warnings == []
    task = job.task
    assert task.Engine.Params["Image"] == "shoal-test/busybox:1"
    assert [(s.Target, s.Source.Params["URL"]) for s in task.InputSources] == [
        ("/inputs", "https://example.com/books/moby-dick.txt")]
    assert [(r.Name, r.Path) for r in task.ResultPaths] == [("outputs", "/outputs")]


def test_wasm_transform_renders_to_a_valid_wasm_job_with_the_args_as_a_list() -> None:
    job, _ = parse_job(load_document(render(job_template("wasm-transform").text, SAMPLE_VALUES)))
    params = job.task.Engine.Params
    assert params["EntryModule"] == "/app"
    assert params["Parameters"] == ["/inputs/table.csv", "/outputs/result.csv"]
    assert {s.Target: s.Source.Params["URL"] for s in job.task.InputSources} == {
        "/app": "https://example.com/wasm/transform.wasm", "/inputs": "https://example.com/data/table.csv"}


def test_s3_partitioned_renders_an_s3_input_partitioned_by_object() -> None:
    spec = load_document(render(job_template("s3-partitioned").text, SAMPLE_VALUES | {"endpoint": ""}))
    assert spec["Count"] == 4
    [source] = spec["Tasks"][0]["InputSources"]
    assert source["Target"] == "/inputs"
    assert source["Source"] == {"Type": "s3", "Params": {
        "Bucket": "shoal-logs", "Key": "2024/06/", "Region": "eu-west-1", "Endpoint": "", "Partition": {
            "Type": "object"}}}
    assert spec["Tasks"][0]["ResultPaths"] == [{"Name": "outputs", "Path": "/outputs"}]
