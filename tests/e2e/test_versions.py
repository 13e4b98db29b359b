"""Names and versions: a spec under an existing Name is the job's next version; rerun, versions, diff."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.conftest import Cluster, Gateway, shoal_command, wait_for
from tests.specs import wasm_job

JOBS = "/api/v1/orchestrator/jobs"


def named(*args: str) -> dict[str, Any]:
    return wasm_job(*args) | {"Name": "versioned"}


def put(gateway: Gateway, job: dict[str, Any], force: bool = False) -> Any:
    return gateway.http.put(JOBS, json={"Job": job, "Force": force})


def shoal(gateway: Gateway, *args: str, cwd: Any = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal_command(*args, "--api-url", gateway.url), capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_a_new_version_stops_the_old_one_and_runs(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    cluster.agent(gateway)
    first = put(gateway, named("spin")).json()
    job_id = first["JobID"]
    assert first["JobVersion"] == 1
    wait_for(lambda: gateway.executions(job_id)[0]["ComputeState"]["StateType"] == "Running", what="version 1")

    second = put(gateway, named("echo", "two")).json()
    assert (second["JobID"], second["JobVersion"]) == (job_id, 2)
    job = gateway.wait_for_job(job_id)
    assert (job["State"]["StateType"], job["Version"]) == ("Completed", 2)
    by_version = {e["JobVersion"]: e for e in gateway.executions(job_id)}
    assert by_version[2]["RunOutput"]["Stdout"] == "two\n"
    wait_for(lambda: {e["JobVersion"]: e for e in gateway.executions(job_id)}[1]["ComputeState"]["StateType"]
             == "Cancelled", what="version 1 to be cancelled")
    results = gateway.http.get(f"{JOBS}/{job_id}/results").json()["Items"]
    assert [r["Params"]["ExecutionID"] for r in results] == [by_version[2]["ID"]]

    same = put(gateway, named("echo", "two"))
    assert same.status_code == 400 and same.json()["Message"] == "no changes detected for new job spec"
    assert "Force" in same.json()["Hint"]
    assert put(gateway, named("echo", "two"), force=True).json()["JobVersion"] == 3
    assert gateway.wait_for_job(job_id)["Version"] == 3

    versions = gateway.http.get(f"{JOBS}/{job_id}/versions").json()["Items"]
    assert [(v["Version"], v["Tasks"][0]["Engine"]["Params"]["Parameters"]) for v in versions] == [
        (1, ["spin"]), (2, ["echo", "two"]), (3, ["echo", "two"])]
    old = gateway.http.get(f"{JOBS}/versioned", params={"job_version": 1}).json()["Job"]
    assert (old["Version"], old["Tasks"][0]["Engine"]["Params"]["Parameters"]) == (1, ["spin"])
    assert gateway.http.get(f"{JOBS}/{job_id}", params={"job_version": 9}).status_code == 404

    retyped = put(gateway, named("echo") | {"Type": "ops"} | {"Count": 0})
    assert retyped.status_code == 400 and retyped.json()["Message"].startswith("Type:")


def test_rerun_and_the_cli(cluster: Cluster, tmp_path: Any) -> None:
    gateway = cluster.gateway()
    cluster.agent(gateway)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(named("echo", "one")))
    assert shoal(gateway, "job", "run", "job.yaml", cwd=tmp_path).returncode == 0
    assert shoal(gateway, "job", "run", "job.yaml", cwd=tmp_path).returncode == 1  # unchanged
    assert "Job successfully submitted" in shoal(gateway, "job", "run", "job.yaml", "--force", cwd=tmp_path).stdout

    spec.write_text(yaml.safe_dump(named("echo", "changed")))
    dry = shoal(gateway, "job", "run", "job.yaml", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "-      - one" in dry.stdout and "+      - changed" in dry.stdout
    assert gateway.job("versioned")["Version"] == 2  # a dry run submits nothing

    rerun = shoal(gateway, "job", "rerun", "versioned", "--version", "1")
    assert rerun.returncode == 0, rerun.stderr
    assert "rerun as version 3" in rerun.stdout and "Completed" in rerun.stdout
    listed = shoal(gateway, "job", "versions", "versioned")
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["1", "2", "3"]
    described = shoal(gateway, "job", "describe", "versioned", "--version", "1", "--output", "yaml")
    assert yaml.safe_load(described.stdout)["Job"]["Version"] == 1
    latest = gateway.executions(gateway.job("versioned")["ID"])[-1]
    assert (latest["JobVersion"], latest["RunOutput"]["Stdout"]) == (3, "one\n")
