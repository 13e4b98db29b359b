"""Input sources end to end: `s3` (prefixes, filters and partitioning) from moto's server with the agent's own
credentials, `local` paths under an agent's allow-list, and `managed` uploads through the gateway."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, Cluster, Gateway, shoal_command
from tests.specs import docker_job, wasm_job


def s3_input(s3: S3, key: str, target: str = "/inputs", **params: Any) -> dict[str, Any]:
    return {"Target": target, "Source": {"Type": "s3", "Params": {
        "Bucket": s3.bucket, "Key": key, "Endpoint": s3.endpoint, "Region": "us-east-1", **params}}}


def listing(execution: dict[str, Any]) -> list[str]:
    assert execution["ComputeState"]["StateType"] == "Completed", execution["ComputeState"]
    assert execution["RunOutput"]["ExitCode"] == 0, execution["RunOutput"]
    return list(execution["RunOutput"]["Stdout"].split())


def by_partition(gateway: Gateway, job_id: str) -> dict[int, list[str]]:
    return {e["PartitionIndex"]: listing(e) for e in gateway.executions(job_id)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3: S3) -> Iterator[tuple[Gateway, Path, Path]]:
    """One gateway, one agent with its own AWS credentials, allowed to read `shared/` and to write `scratch/`."""
    root = tmp_path_factory.mktemp("inputs")
    shared, scratch = root / "shared", root / "scratch"
    shared.mkdir()
    scratch.mkdir()
    (shared / "data.txt").write_text("local data\n")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
            patch.setenv(name, value)
        running = Cluster(root)
        gateway = running.gateway(max_attempts="1")
        running.agent(gateway, "--max-executions", "4", "--allow-local-path", str(shared),
                      "--allow-local-path", f"{scratch}:rw")
    for key in ("set1/001.txt", "set1/002.txt", "set1/101.txt", "set1/102.txt", "set1/notes.md",
                "logs/2024-01-15-a.log", "logs/2024-01-15-b.log", "logs/2024-02-01-a.log", "logs/2024-02-01-b.log"):
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=f"content of {key}\n".encode())
    yield gateway, shared, scratch
    running.close()


# -- s3 --------------------------------------------------------------------------------------------------


def test_an_s3_prefix_is_laid_out_under_the_target_with_the_filter_applied(stack: Any, s3: S3) -> None:
    gateway = stack[0]
    job, execution = gateway.run(wasm_job("ls", "/inputs", inputs=[s3_input(s3, "set1/", Filter=r"\.txt$")]))
    assert job["State"]["StateType"] == "Completed"
    assert listing(execution) == ["001.txt", "002.txt", "101.txt", "102.txt"]


def test_a_single_s3_object_is_fetched_by_its_key(stack: Any, s3: S3) -> None:
    gateway = stack[0]
    _, execution = gateway.run(wasm_job("cat", "/inputs/notes.md", inputs=[s3_input(s3, "set1/notes.md")]))
    assert execution["RunOutput"]["Stdout"] == "content of set1/notes.md\n"


@pytest.mark.parametrize(("partition", "expected"), [
    # Bacalhau's own expectations for these keys (pkg/storage/s3 partitioning tests)
    ({"Type": "substring", "StartIndex": 2, "EndIndex": 3}, {0: ["001.txt", "101.txt"], 1: ["002.txt", "102.txt"]}),
    ({"Type": "regex", "Pattern": r"\d0"}, {0: ["101.txt", "102.txt"], 1: ["001.txt", "002.txt"]}),
])
def test_s3_partitioning_gives_each_partition_its_share(stack: Any, s3: S3, partition: dict[str, Any],
                                                       expected: dict[int, list[str]]) -> None:
    gateway = stack[0]
    job = wasm_job("ls", "/inputs", count=2, inputs=[s3_input(s3, "set1/", Filter=r"\.txt$", Partition=partition)])
    job_id = gateway.submit(job)
    assert gateway.wait_for_job(job_id)["State"]["StateType"] == "Completed"
    assert by_partition(gateway, job_id) == expected


def test_object_and_date_partitioning_split_every_key_once(stack: Any, s3: S3) -> None:
    gateway = stack[0]
    for partition in ({"Type": "object"}, {"Type": "date", "DateFormat": "2006-01-02"}):
        job = wasm_job("ls", "/inputs", count=3, inputs=[s3_input(s3, "logs/", Partition=partition)])
        job_id = gateway.submit(job)
        assert gateway.wait_for_job(job_id)["State"]["StateType"] == "Completed"
        shares = by_partition(gateway, job_id)
        assert sorted(name for names in shares.values() for name in names) == [
            "2024-01-15-a.log", "2024-01-15-b.log", "2024-02-01-a.log", "2024-02-01-b.log"]
        if partition["Type"] == "date":  # one day's files always land together
            where = {name: index for index, names in shares.items() for name in names}
            assert where["2024-01-15-a.log"] == where["2024-01-15-b.log"]
            assert where["2024-02-01-a.log"] == where["2024-02-01-b.log"]


def test_a_missing_s3_key_fails_the_job_with_the_reason(stack: Any, s3: S3) -> None:
    gateway = stack[0]
    job, execution = gateway.run(wasm_job("ls", "/inputs", inputs=[s3_input(s3, "nothing-here/")]))
    assert job["State"]["StateType"] == "Failed"
    assert "matches no objects" in execution["ComputeState"]["Message"]


def test_invalid_s3_partitioning_is_refused_at_submission(stack: Any, s3: S3) -> None:
    gateway = stack[0]
    job = wasm_job("ls", "/inputs", count=2,
                   inputs=[s3_input(s3, "set1/", Partition={"Type": "substring", "StartIndex": 3, "EndIndex": 1})])
    response = gateway.http.put("/api/v1/orchestrator/jobs", json={"Job": job})
    assert response.status_code == 400
    assert response.json()["Message"].startswith("Tasks[0].InputSources[1].Source.Params.Partition.EndIndex:")
    dotted = wasm_job("ls", "/data", inputs=[local_input(Path("/srv/../etc"), "/data")])
    response = gateway.http.put("/api/v1/orchestrator/jobs", json={"Job": dotted})
    assert response.status_code == 400
    assert response.json()["Message"].startswith("Tasks[0].InputSources[1].Source.Params.SourcePath:")


# -- local -----------------------------------------------------------------------------------------------


def local_input(path: Path, target: str, read_write: bool = False) -> dict[str, Any]:
    return {"Target": target, "Source": {"Type": "local", "Params": {"SourcePath": str(path), "ReadWrite": read_write}}}


def test_a_local_folder_under_the_allow_list_is_mounted_read_only(stack: Any) -> None:
    gateway, shared, _ = stack
    _, execution = gateway.run(wasm_job("cat", "/data/data.txt", inputs=[local_input(shared, "/data")]))
    assert execution["RunOutput"]["Stdout"] == "local data\n"
    _, refused = gateway.run(wasm_job("write", "/data/new.txt", "x", inputs=[local_input(shared, "/data")]))
    assert refused["RunOutput"]["ExitCode"] != 0
    assert not (shared / "new.txt").exists()


def test_read_write_needs_the_allow_list_to_say_rw(stack: Any) -> None:
    gateway, shared, scratch = stack
    _, wrote = gateway.run(wasm_job("write", "/scratch/out.txt", "written by the task",
                                    inputs=[local_input(scratch, "/scratch", read_write=True)]))
    assert wrote["RunOutput"]["ExitCode"] == 0, wrote["RunOutput"]
    assert (scratch / "out.txt").read_text() == "written by the task\n"
    job, refused = gateway.run(wasm_job("ls", "/data", inputs=[local_input(shared, "/data", read_write=True)]))
    assert job["State"]["StateType"] == "Failed"
    assert "may only be mounted read-only" in refused["ComputeState"]["Message"]


def test_a_path_outside_the_allow_list_is_refused(stack: Any) -> None:
    gateway, shared, _ = stack
    escape = shared / "escape"
    escape.symlink_to("/etc")
    for outside in (Path("/etc"), escape):
        job, execution = gateway.run(wasm_job("ls", "/data", inputs=[local_input(outside, "/data")]))
        assert job["State"]["StateType"] == "Failed"
        assert "is not under this agent's allow-listed paths" in execution["ComputeState"]["Message"]


def test_a_local_file_is_bind_mounted_into_a_container(stack: Any, docker_engine: object) -> None:
    gateway, shared, _ = stack
    job = docker_job("cat /in/data.txt && touch /in/data.txt 2>/dev/null || echo read-only")
    job["Tasks"][0]["InputSources"] = [local_input(shared / "data.txt", "/in/data.txt")]
    _, execution = gateway.run(job)
    assert execution["RunOutput"]["Stdout"] == "local data\nread-only\n"


def test_local_inputs_go_only_to_agents_that_allow_local_paths(cluster: Cluster, tmp_path: Path) -> None:
    gateway = cluster.gateway()
    cluster.agent(gateway)
    response = gateway.http.put("/api/v1/orchestrator/jobs",
                                json={"Job": wasm_job("ls", "/data", inputs=[local_input(tmp_path, "/data")])})
    job = gateway.job(response.json()["JobID"])
    assert job["State"]["StateType"] == "Failed"
    assert "does not support input source local" in job["State"]["Message"]


# -- managed uploads -------------------------------------------------------------------------------------


def upload(gateway: Gateway, data: bytes, name: str = "data.bin", namespace: str = "default") -> dict[str, Any]:
    response = gateway.http.post("/api/v1/uploads", json={"Name": name, "Size": len(data), "Namespace": namespace,
                                                          "SHA256": hashlib.sha256(data).hexdigest()})
    assert response.status_code == 201, response.text
    target = dict(response.json())
    put = gateway.http.put(target["URL"], content=data, headers=target["Headers"])
    assert put.status_code == 200, put.text
    return target


def test_an_upload_is_fetched_by_the_agent_byte_for_byte(stack: Any, tmp_path: Path) -> None:
    gateway = stack[0]
    data = os.urandom(700_000)
    target = upload(gateway, data)
    assert target["Source"] == {"Type": "managed", "Params": {"Key": target["Key"]}}
    job = wasm_job("cat", "/inputs/data.bin", inputs=[{"Target": "/inputs/data.bin", "Source": target["Source"]}])
    finished, _ = gateway.run(job)
    assert finished["State"]["StateType"] == "Completed"
    assert (gateway.download(finished["ID"], tmp_path / "out") / "stdout").read_bytes() == data
    params = finished["Tasks"][0]["InputSources"][1]["Source"]["Params"]
    assert params == {"Key": target["Key"], "Size": len(data), "SHA256": hashlib.sha256(data).hexdigest()}


def test_uploads_are_validated_and_a_job_must_name_an_arrived_upload_of_its_namespace(stack: Any) -> None:
    gateway = stack[0]
    for body, field in (({"Name": "../x", "Size": 1, "SHA256": "0" * 64}, "Name"),
                        ({"Name": "x", "Size": -1, "SHA256": "0" * 64}, "Size"),
                        ({"Name": "x", "Size": 1, "SHA256": "abc"}, "SHA256")):
        response = gateway.http.post("/api/v1/uploads", json=body)
        assert response.status_code == 400 and response.json()["Message"].startswith(f"{field}:")
    too_big = gateway.http.post("/api/v1/uploads", json={"Name": "x", "Size": 11 << 30, "SHA256": "0" * 64})
    assert too_big.status_code == 413

    announced = gateway.http.post("/api/v1/uploads", json={"Name": "x", "Size": 3, "SHA256": "0" * 64}).json()
    other = upload(gateway, b"theirs", namespace="team-b")
    field = "Tasks[0].InputSources[1].Source.Params.Key"
    for source, message in ((announced["Source"], "nothing has been uploaded"),
                            (other["Source"], "is not an upload of namespace 'default'")):
        job = wasm_job("ls", "/inputs", inputs=[{"Target": "/inputs/x", "Source": source}])
        response = gateway.http.put("/api/v1/orchestrator/jobs", json={"Job": job})
        assert response.status_code == 400, response.text
        assert response.json()["Message"].startswith(f"{field}: ") and message in response.json()["Message"]


def shoal(gateway: Gateway, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal_command(*args), capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=gateway.env | {"SHOAL_API_URL": gateway.url})


def test_the_cli_sends_small_files_inline_and_uploads_big_ones(stack: Any, tmp_path: Path, probe_wasm: Path) -> None:
    gateway = stack[0]
    (tmp_path / "small.txt").write_text("small\n")
    (tmp_path / "big.bin").write_bytes(b"b" * 400_000)
    ran = shoal(gateway, "wasm", "run", str(probe_wasm), "--id-only", "-i", "small.txt", "-i",
                f"file://{tmp_path / 'big.bin'}:/data/big.bin", "--", "ls", "/data", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    job = gateway.job(ran.stdout.strip())
    kinds = {s["Target"]: s["Source"]["Type"] for s in job["Tasks"][0]["InputSources"]}
    assert kinds == {"/app/probe.wasm": "inline", "/inputs/small.txt": "inline", "/data/big.bin": "managed"}
    [execution] = gateway.executions(job["ID"])
    assert listing(execution) == ["big.bin"]

    missing = shoal(gateway, "docker", "run", "-i", "file:///no/such/file", "img", "--", "true", cwd=tmp_path)
    assert missing.returncode != 0 and "no such file here" in missing.stderr


def test_wasm_run_uploads_a_module_too_big_to_send_inline(stack: Any, tmp_path: Path, probe_wasm: Path) -> None:
    gateway = stack[0]
    module = tmp_path / "padded.wasm"
    # a custom section (id 0, name "pad") makes the module bigger without changing what it does
    payload = b"\x03pad" + b"\0" * 300_000
    size, encoded = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        encoded += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    module.write_bytes(probe_wasm.read_bytes() + b"\x00" + encoded + payload)
    ran = shoal(gateway, "wasm", "run", str(module), "--id-only", "--", "echo", "uploaded", "module", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    job = gateway.job(ran.stdout.strip())
    [entry] = job["Tasks"][0]["InputSources"]
    assert (entry["Target"], entry["Source"]["Type"]) == ("/app/padded.wasm", "managed")
    assert gateway.executions(job["ID"])[0]["RunOutput"]["Stdout"] == "uploaded module\n"
    described = json.loads(shoal(gateway, "job", "describe", job["ID"], "--output", "json", cwd=tmp_path).stdout)
    assert described["Job"]["Tasks"][0]["InputSources"][0]["Source"]["Params"]["Size"] == module.stat().st_size


def test_the_s3_partitioned_template_counts_each_partitions_share(stack: Any, s3: S3, docker_engine: object,
                                                                 tmp_path: Path) -> None:
    gateway = stack[0]
    ran = shoal(gateway, "job", "run", "--template", "s3-partitioned", "--id-only", "-V", f"bucket={s3.bucket}",
                "-V", "prefix=set1/", "-V", "region=us-east-1", "-V", f"endpoint={s3.endpoint}",
                "-V", "partitions=2", "-V", "image=shoal-test/busybox:1", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    counted: list[str] = []
    for execution in gateway.executions(ran.stdout.strip()):
        lines = [line.split() for line in execution["RunOutput"]["Stdout"].splitlines()]
        counted += [name.removeprefix("./") for count, name in lines if name != "total" and count == "1"]
    assert sorted(counted) == ["001.txt", "002.txt", "101.txt", "102.txt", "notes.md"]
