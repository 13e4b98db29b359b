"""The `shoal` command as a user runs it, against a real gateway and agent."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Gateway, one_agent_stack, shoal_command
from tests.specs import PROBE, inline

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from one_agent_stack(tmp_path_factory, "cli", "--max-executions", "2")


def shoal(
    gateway: Gateway, *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal_command(*args), capture_output=True, text=True, timeout=120, cwd=cwd, input=stdin,
                          env=gateway.env | {"SHOAL_API_URL": gateway.url})


def test_wasm_run_with_an_input_file_and_get(stack: Gateway, tmp_path: Path) -> None:
    (tmp_path / "words.txt").write_text("the quick brown fox\njumps\n")
    module = EXAMPLES / "wasm" / "wordcount.wasm"
    ran = shoal(stack, "wasm", "run", str(module), "-i", "words.txt", "-o", "outputs:/outputs", "--",
                "/inputs/words.txt", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "2 5 26 /inputs/words.txt" in ran.stdout
    job_id = ran.stdout.split("Job ID: ")[1].split()[0]
    got = shoal(stack, "job", "get", job_id[:10], cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    out = tmp_path / f"job-{job_id[:10]}"
    assert (out / "outputs" / "counts.txt").read_text() == "2 5 26 /inputs/words.txt\n2 5 26 total\n"
    assert (out / "stdout").read_text() == "2 5 26 /inputs/words.txt\n2 5 26 total\n"
    assert (out / "exitCode").read_text() == "0"


def test_wasm_run_passes_args(stack: Gateway) -> None:
    ran = shoal(stack, "wasm", "run", str(PROBE), "echo", "one", "two")
    assert ran.returncode == 0, ran.stderr
    assert "one two" in ran.stdout


def test_docker_run_hello_world(stack: Gateway, docker_engine: object) -> None:
    ran = shoal(stack, "docker", "run", "shoal-test/busybox:1", "--", "echo", "hello", "docker")
    assert ran.returncode == 0, ran.stderr
    assert "Completed" in ran.stdout and "hello docker" in ran.stdout


def test_job_run_a_yaml_file_id_only_then_describe_and_list(stack: Gateway, tmp_path: Path) -> None:
    spec = {
        "name": "cli-yaml-job",
        "type": "batch",
        "tasks": [{
            "name": "main",
            "engine": {"type": "wasm", "params": {"entryModule": "/app/probe.wasm", "parameters": ["echo", "yaml"]}},
            "inputSources": [{"target": "/app/probe.wasm", "source": {"type": "urlDownload",
                                                                      "params": {"url": "http://127.0.0.1:1/x"}}}],
        }],
    }
    # an input URL nobody serves: the job must fail, and the command must say so with exit status 1
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    failed = shoal(stack, "job", "run", "job.yaml", cwd=tmp_path)
    assert failed.returncode == 1
    assert "could not download http://127.0.0.1:1/x" in failed.stdout + failed.stderr

    spec["tasks"][0]["inputSources"][0] = inline(PROBE.read_bytes(), "/app/probe.wasm")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    ran = shoal(stack, "job", "run", "job.yaml", "--id-only", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    job_id = ran.stdout.strip()
    assert job_id.startswith("j-") and "\n" not in job_id

    described = json.loads(shoal(stack, "job", "describe", "cli-yaml-job", "--output", "json").stdout)
    assert described["Job"]["ID"] == job_id
    assert described["Job"]["State"]["StateType"] == "Completed"
    assert described["Executions"]["Items"][0]["RunOutput"]["Stdout"] == "yaml\n"
    table = shoal(stack, "job", "describe", job_id[:10]).stdout
    assert "Completed" in table and "yaml" in table

    listed = yaml.safe_load(shoal(stack, "job", "list", "--output", "yaml", "--limit", "100").stdout)
    assert job_id in [item["ID"] for item in listed["Items"]]
    assert job_id[:10] in shoal(stack, "job", "list").stdout


def test_job_run_from_stdin_without_waiting(stack: Gateway) -> None:
    spec = json.dumps({"Type": "batch", "Tasks": [{"Name": "main", "Engine": {
        "Type": "docker", "Params": {"Image": "shoal-test/busybox:1", "Parameters": ["true"]}}}]})
    ran = shoal(stack, "job", "run", "--no-wait", "--id-only", stdin=spec)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().startswith("j-")


def test_invalid_spec_is_refused_naming_the_field(stack: Gateway, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("Type: batch\nTasks:\n  - Name: main\n    Engine: {Type: docker, Params: {}}\n")
    ran = shoal(stack, "job", "run", "bad.yaml", cwd=tmp_path)
    assert ran.returncode == 1
    assert "Tasks[0].Engine.Params.Image" in ran.stderr
    assert "HTTP 400" in ran.stderr


def test_unknown_job_and_unreachable_gateway_are_clear_errors(stack: Gateway) -> None:
    missing = shoal(stack, "job", "describe", "j-doesnotexist")
    assert missing.returncode == 1 and "job not found: j-doesnotexist" in missing.stderr
    gone = subprocess.run(shoal_command("job", "list", "--api-url", "http://127.0.0.1:1"), capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode == 1 and "cannot reach the gateway at http://127.0.0.1:1" in gone.stderr


def test_agent_alive_and_version(stack: Gateway) -> None:
    assert json.loads(shoal(stack, "agent", "alive").stdout) == {"Status": "OK"}
    assert json.loads(shoal(stack, "agent", "version").stdout)["GitVersion"].startswith("v")
