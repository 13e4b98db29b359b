"""`shoal job run` templating and the named templates, run as a user runs them against a real gateway and agent."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TEST_IMAGE, Gateway, free_port, one_agent_stack, shoal_command
from tests.specs import PROBE, wasm_job


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from one_agent_stack(tmp_path_factory, "templates", "--max-executions", "2")


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on loopback serving `tmp_path/www`."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def shoal(gateway: Gateway, *args: str, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal_command(*args), capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=gateway.env | {"SHOAL_API_URL": gateway.url} | (env or {}))


def job_ids(gateway: Gateway) -> list[str]:
    response = gateway.http.get("/api/v1/orchestrator/jobs", params={"limit": 1000, "namespace": "*"})
    assert response.status_code == 200, response.text
    return [item["ID"] for item in response.json()["Items"]]


def probe_spec(tmp_path: Path, *args: str, name: str = "") -> Path:
    """A spec file running the probe module (sent inline) with `args`, which may hold template actions."""
    spec = wasm_job(*args)
    if name:
        spec["Name"] = name
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_job_templates_lists_the_named_templates(stack: Gateway) -> None:
    listed = shoal(stack, "job", "templates")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VARIABLES", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == ["s3-partitioned", "wasm-transform", "word-count"]
    assert re.search(r"^word-count\s+image,url\s+Count the lines", listed.stdout, re.M)

    items = json.loads(shoal(stack, "job", "templates", "--output", "json").stdout)["Items"]
    assert {item["Name"]: sorted(item["Variables"]) for item in items}["wasm-transform"] == ["args", "input", "module"]

    shown = shoal(stack, "job", "templates", "word-count")
    assert shown.returncode == 0 and 'URL: "{{.url}}"' in shown.stdout
    unknown = shoal(stack, "job", "templates", "nope")
    assert unknown.returncode == 1 and "no job template named 'nope'" in unknown.stderr


def test_word_count_template_counts_a_downloaded_file(stack: Gateway, docker_engine: object,
                                                      web_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = web_root
    (root / "words.txt").write_text("the quick brown fox\njumps over the lazy dog\n")
    ran = shoal(stack, "job", "run", "--template", "word-count", "-V", f"url={base}/words.txt",
                "-V", f"image={TEST_IMAGE}")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(r"^\s*2\s+9\s+44 words\.txt$", ran.stdout, re.M), ran.stdout
    job_id = ran.stdout.split("Job ID: ")[1].split()[0]
    got = shoal(stack, "job", "get", job_id, "--output-dir", "out", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out" / "outputs" / "counts.txt").read_text().split() == ["2", "9", "44", "words.txt"]


def test_wasm_transform_template_runs_a_module_from_a_url_on_a_file_from_a_url(
        stack: Gateway, web_root: tuple[str, Path]) -> None:
    base, root = web_root
    (root / "probe.wasm").write_bytes(PROBE.read_bytes())
    (root / "table.csv").write_text("a,b\n1,2\n")
    ran = shoal(stack, "job", "run", "--template", "wasm-transform", "-V", f"module={base}/probe.wasm",
                "-V", f"input={base}/table.csv", "-V", "args=cat, /inputs/table.csv")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "a,b\n1,2\n" in ran.stdout


def test_a_spec_file_takes_variables_from_flags(stack: Gateway, tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, "echo", "{{.greeting}}", "from {{ .who }}")
    ran = shoal(stack, "job", "run", str(spec), "-V", "greeting=hi", "-V", "who=flags")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "hi from flags\n" in ran.stdout
    # Bacalhau's form: several NAME=VALUE pairs in one flag, separated by commas
    ran = shoal(stack, "job", "run", str(spec), "-V", "greeting=hello,who=one flag")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "hello from one flag\n" in ran.stdout


def test_a_spec_file_takes_variables_from_the_environment(stack: Gateway, tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, "echo", "{{.TPL_GREETING}}", "from {{.TPL_WHO}}")
    env = {"TPL_GREETING": "howdy", "TPL_WHO": "the environment"}
    ran = shoal(stack, "job", "run", str(spec), "-E", "^TPL_", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "howdy from the environment\n" in ran.stdout
    # `*` selects every variable, and -V wins over the environment
    ran = shoal(stack, "job", "run", str(spec), "-E", "*", "-V", "TPL_WHO=a flag", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "howdy from a flag\n" in ran.stdout
    # variables whose names do not match are not given
    ran = shoal(stack, "job", "run", str(spec), "-E", "GREETING", env=env)
    assert ran.returncode == 1 and '"TPL_WHO"' in ran.stderr and '"TPL_GREETING"' not in ran.stderr


def test_a_missing_variable_is_an_error_and_nothing_is_submitted(stack: Gateway, tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, "echo", "{{.greeting}}", name="templated-but-missing")
    before = job_ids(stack)
    ran = shoal(stack, "job", "run", str(spec), "-V", "other=1")
    assert ran.returncode == 1
    assert '"greeting"' in ran.stderr and "-V greeting=VALUE" in ran.stderr
    assert "submitted" not in ran.stdout
    assert job_ids(stack) == before
    assert stack.http.get("/api/v1/orchestrator/jobs/templated-but-missing").status_code == 404


def test_an_action_shoal_does_not_support_is_an_error_with_its_line(stack: Gateway, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("Type: batch\nTasks:\n  - Name: main\n    Engine: {Type: docker, Params: {Image: '{{ image }}'}}\n")
    before = job_ids(stack)
    ran = shoal(stack, "job", "run", str(spec), "-V", "image=busybox")
    assert ran.returncode == 1
    assert "line 4: {{ image }} is not a template action" in ran.stderr
    assert "did you mean {{.image}}?" in ran.stderr
    assert job_ids(stack) == before


def test_no_template_sends_the_spec_as_it_is(stack: Gateway, tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, "echo", "{{.greeting}}", "{{ image }}")
    ran = shoal(stack, "job", "run", str(spec), "--no-template")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "{{.greeting}} {{ image }}\n" in ran.stdout


def test_a_template_and_a_file_together_are_refused(stack: Gateway, tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, "echo", "hi")
    before = job_ids(stack)
    ran = shoal(stack, "job", "run", str(spec), "--template", "word-count")
    assert ran.returncode == 2
    assert "either FILE or --template" in ran.stderr
    bad = shoal(stack, "job", "run", str(spec), "-V", "no-equals-sign")
    assert bad.returncode == 2 and "must be NAME=VALUE" in bad.stderr
    assert job_ids(stack) == before
