"""WASM jobs end to end: a real gateway process, a real agent process, wasmtime, the local object store."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, free_port, one_agent_stack
from tests.specs import inline, wasm_job


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from one_agent_stack(tmp_path_factory, "wasm", "--max-executions", "4")


def test_args_reach_the_module_and_stdout_is_published(stack: Gateway, tmp_path: Path) -> None:
    job, execution = stack.run(wasm_job("echo", "hello", "from wasm"))
    assert job["State"]["StateType"] == "Completed"
    assert execution["RunOutput"]["Stdout"] == "hello from wasm\n"
    out = stack.download(job["ID"], tmp_path / "out")
    assert (out / "stdout").read_text() == "hello from wasm\n"
    assert (out / "exitCode").read_text() == "0"
    assert (out / "stderr").read_bytes() == b""


def test_task_env_has_user_and_system_variables(stack: Gateway) -> None:
    job, execution = stack.run(wasm_job("env", env={"GREETING": "hi there"}))
    env = dict(line.split("=", 1) for line in execution["RunOutput"]["Stdout"].splitlines())
    assert env["GREETING"] == "hi there"
    for prefix in ("SHOAL_", "BACALHAU_"):
        assert env[prefix + "JOB_ID"] == job["ID"]
        assert env[prefix + "EXECUTION_ID"] == execution["ID"]
        assert env[prefix + "JOB_TYPE"] == "batch"
        assert env[prefix + "PARTITION_INDEX"] == "0"
        assert env[prefix + "PARTITION_COUNT"] == "1"
    assert env["SHOAL_NODE_ID"] == execution["NodeID"]


def test_inline_input_is_readable_but_not_writable(stack: Gateway) -> None:
    data = b"line one\nline two\n\x00binary\xff\n"
    _, read = stack.run(wasm_job("cat", "/inputs/data.bin", inputs=[inline(data, "/inputs/data.bin")]))
    assert read["RunOutput"]["ExitCode"] == 0
    _, write = stack.run(wasm_job("write", "/inputs/data.bin", "overwritten",
                                   inputs=[inline(data, "/inputs/data.bin")]))
    assert write["RunOutput"]["ExitCode"] == 3
    assert "write failed" in write["RunOutput"]["stderr"]


def test_result_paths_are_writable_and_downloaded_byte_for_byte(stack: Gateway, tmp_path: Path) -> None:
    job, execution = stack.run(wasm_job("write", "/outputs/answer.txt", "forty-two", outputs={"outputs": "/outputs"}))
    assert execution["RunOutput"]["ExitCode"] == 0, execution
    out = stack.download(job["ID"], tmp_path / "out")
    assert (out / "outputs" / "answer.txt").read_text() == "forty-two\n"


def test_large_stdout_is_kept_whole_in_results_and_truncated_in_the_summary(stack: Gateway, tmp_path: Path) -> None:
    size = 3_000_000
    job, execution = stack.run(wasm_job("big", str(size)))
    assert execution["RunOutput"]["StdoutTruncated"] is True
    assert len(execution["RunOutput"]["Stdout"]) == 2048
    stdout = (stack.download(job["ID"], tmp_path / "out") / "stdout").read_bytes()
    expected = (b"x" * 64 + b"\n") * (size // 65) + (b"x" * 64 + b"\n")[: size % 65]
    assert stdout == expected


def test_non_zero_exit_completes_with_the_code(stack: Gateway, tmp_path: Path) -> None:
    job, execution = stack.run(wasm_job("exit", "5"))
    assert job["State"]["StateType"] == "Completed"
    assert execution["ComputeState"]["StateType"] == "Completed"
    assert execution["RunOutput"]["ExitCode"] == 5
    out = stack.download(job["ID"], tmp_path / "out")
    assert (out / "exitCode").read_text() == "5"
    assert (out / "stderr").read_text() == "exiting with 5\n"


def test_execution_timeout_fails_the_execution(stack: Gateway) -> None:
    job, execution = stack.run(wasm_job("spin", timeout=1))
    assert execution["ComputeState"]["StateType"] == "Failed"
    assert "timed out" in execution["ComputeState"]["Message"]
    assert job["State"]["StateType"] == "Failed"


def test_a_module_that_is_not_wasm_fails_clearly(stack: Gateway, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"not a module")
    _, execution = stack.run(wasm_job("echo", module=bogus))
    assert execution["ComputeState"]["StateType"] == "Failed"
    assert "not a valid WASM module" in execution["ComputeState"]["Message"]


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


def test_url_download_input_lands_in_the_target_folder(stack: Gateway, web_root: tuple[str, Path]) -> None:
    base, root = web_root
    (root / "words.txt").write_bytes(b"downloaded words\n")
    source = {"Target": "/data", "Source": {"Type": "urlDownload", "Params": {"URL": f"{base}/words.txt"}}}
    _, execution = stack.run(wasm_job("cat", "/data/words.txt", inputs=[source]))
    assert execution["RunOutput"]["Stdout"] == "downloaded words\n"


def test_partitions_each_get_their_index(stack: Gateway, tmp_path: Path) -> None:
    job_id = stack.submit(wasm_job("env", count=3))
    assert stack.wait_for_job(job_id)["State"]["StateType"] == "Completed"
    indexes = set()
    for execution in stack.executions(job_id):
        env = dict(line.split("=", 1) for line in execution["RunOutput"]["Stdout"].splitlines())
        assert env["SHOAL_PARTITION_COUNT"] == "3"
        indexes.add((execution["PartitionIndex"], env["SHOAL_PARTITION_INDEX"]))
    assert indexes == {(0, "0"), (1, "1"), (2, "2")}
    out = stack.download(job_id, tmp_path / "out")
    assert (out / "stdout").read_text().count("SHOAL_JOB_ID=") == 3
