"""`shoal job run|describe|list|executions|get`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from shoal.cli.output import api_options, dump, output_option, short, table, when
from shoal.cli.submit import run_options, submit_and_report
from shoal.client import Client
from shoal.errors import SpecError
from shoal.results import download_results
from shoal.spec import load_document


@click.group()
def job() -> None:
    """Submit and inspect jobs."""


@job.command("run")
@click.argument("file", type=click.File("rb"), default="-")
@run_options
@click.option("--force", is_flag=True, help="Submit even if the spec is the same as the job's latest version.")
@click.option("--dry-run", is_flag=True, help="Validate and show how the spec differs from the job's latest version.")
@api_options
def run(file: Any, wait: bool, wait_timeout_secs: int, id_only: bool, follow: bool, force: bool, dry_run: bool,
        api_url: str) -> None:
    """Submit a job spec (JSON or YAML; `-` or nothing reads stdin). A spec whose Name is an existing job's
    makes that job's next version."""
    spec = load_document(file.read())
    if not isinstance(spec, dict):
        raise SpecError("", "the file must hold one job spec mapping")
    with Client(api_url) as api:
        if dry_run:
            reply = api.diff(spec)
            for warning in reply.get("Warnings") or []:
                click.echo(f"Warning: {warning}", err=True)
            click.echo(reply["Diff"].rstrip() or "No changes from the job's latest version.")
            return
        submit_and_report(api, spec, wait=wait, id_only=id_only, wait_timeout=wait_timeout_secs, follow=follow,
                          force=force)


@job.command()
@click.argument("ref")
@click.option("-v", "--version", "version", default=0, help="The version to run again (default: the latest).")
@click.option("--namespace", default="")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--wait-timeout-secs", default=600, show_default=True)
@api_options
def rerun(ref: str, version: int, namespace: str, wait: bool, wait_timeout_secs: int, api_url: str) -> None:
    """Run a job again as a new version, from its latest spec or an older one."""
    with Client(api_url) as api:
        reply = api.rerun(ref, version=version, namespace=namespace)
        click.echo(f"Job {short(reply['JobID'])} rerun as version {reply['JobVersion']}")
        if wait:
            state = api.wait(reply["JobID"], timeout=wait_timeout_secs, namespace=namespace)["State"]
            click.echo(f"Job {short(reply['JobID'])} {state['StateType']}")
            if state["StateType"] != "Completed":
                raise click.exceptions.Exit(1)


@job.command()
@click.argument("ref")
@click.option("--namespace", default="")
@output_option("table")
@api_options
def versions(ref: str, namespace: str, output_format: str, api_url: str) -> None:
    """List a job's versions."""
    with Client(api_url) as api:
        items = api.versions(ref, namespace=namespace)
    if output_format != "table":
        dump({"Items": items}, output_format)
        return
    table(["VERSION", "CREATED", "NAME", "ENGINE"],
          [[v["Version"], when(v["CreateTime"]), v["Name"], v["Tasks"][0]["Engine"]["Type"]] for v in items])


@job.command()
@click.argument("ref")
@click.option("--namespace", default="", help="Namespace (default: default).")
@click.option("-v", "--version", "version", default=0, help="Show this version's spec (default: the latest).")
@output_option("table")
@api_options
def describe(ref: str, namespace: str, version: int, output_format: str, api_url: str) -> None:
    """Show a job (by ID, ID prefix or name) and its executions."""
    with Client(api_url) as api:
        reply = api.job(ref, include="executions", namespace=namespace, version=version)
    if output_format != "table":
        dump(reply, output_format)
        return
    spec, executions = reply["Job"], reply.get("Executions", {}).get("Items", [])
    state = spec["State"]
    fields = [
        ("ID", spec["ID"]), ("Name", spec["Name"]), ("Namespace", spec["Namespace"]), ("Type", spec["Type"]),
        ("State", state["StateType"] + (f" ({state['Message']})" if state["Message"] else "")),
        ("Count", spec["Count"]), ("Version", spec["Version"]), ("Created", when(spec["CreateTime"])),
        ("Engine", spec["Tasks"][0]["Engine"]["Type"]),
    ]
    for label, value in fields:
        click.echo(f"{label:<10} {value}")
    click.echo("\nExecutions")
    table(
        ["ID", "NODE", "PARTITION", "ATTEMPT", "STATE", "EXIT", "MESSAGE"],
        [[short(e["ID"]), short(e["NodeID"]), e["PartitionIndex"], e["Attempt"], e["ComputeState"]["StateType"],
          "" if e["RunOutput"] is None else e["RunOutput"]["ExitCode"], e["ComputeState"]["Message"][:60]]
         for e in executions],
    )
    for execution in executions:
        output = execution.get("RunOutput")
        if output and output["Stdout"]:
            click.echo(f"\nStandard output (partition {execution['PartitionIndex']})\n{output['Stdout'].rstrip()}")


@job.command("list")
@click.option("--namespace", default="default", show_default=True, help="`*` lists every namespace.")
@click.option("--limit", default=10, show_default=True)
@click.option("--next-token", default="")
@click.option("--state", default="", help="Only jobs in this state.")
@click.option("--labels", default="", help="Only jobs whose labels match, e.g. 'team=a,env in (dev,qa)'.")
@click.option("--order-by", type=click.Choice(["created_at", "id"]), default="created_at", show_default=True)
@click.option("--order-reversed", is_flag=True)
@output_option("table")
@api_options
def list_jobs(namespace: str, limit: int, next_token: str, state: str, labels: str, order_by: str,
              order_reversed: bool, output_format: str, api_url: str) -> None:
    """List jobs, newest first."""
    with Client(api_url) as api:
        reply = api.jobs(limit=limit, next_token=next_token, namespace=namespace, state=state, order_by=order_by,
                         reverse="true" if order_reversed else "", labels=labels)
    if output_format != "table":
        dump(reply, output_format)
        return
    table(["CREATED", "ID", "NAME", "TYPE", "STATE"],
          [[when(j["CreateTime"]), short(j["ID"]), j["Name"][:40], j["Type"], j["State"]["StateType"]]
           for j in reply["Items"]])
    if reply.get("NextToken"):
        click.echo(f"\nMore: shoal job list --next-token {reply['NextToken']}")


@job.command()
@click.argument("ref")
@click.option("--namespace", default="")
@output_option("table")
@api_options
def executions(ref: str, namespace: str, output_format: str, api_url: str) -> None:
    """List a job's executions."""
    with Client(api_url) as api:
        items = api.executions(ref, namespace=namespace)
    if output_format != "table":
        dump({"Items": items}, output_format)
        return
    table(["CREATED", "ID", "NODE", "PARTITION", "STATE", "EXIT"],
          [[when(e["CreateTime"]), short(e["ID"]), short(e["NodeID"]), e["PartitionIndex"],
            e["ComputeState"]["StateType"], "" if e["RunOutput"] is None else e["RunOutput"]["ExitCode"]]
           for e in items])


@job.command()
@click.argument("ref")
@click.option("--namespace", default="")
@click.option("--event-type", type=click.Choice(["all", "job", "execution"]), default="all", show_default=True)
@click.option("--execution-id", default="", help="Only this execution's events.")
@click.option("--limit", default=100, show_default=True)
@click.option("--next-token", default="")
@output_option("table")
@api_options
def history(ref: str, namespace: str, event_type: str, execution_id: str, limit: int, next_token: str,
            output_format: str, api_url: str) -> None:
    """A job's history: job and execution events, oldest first."""
    with Client(api_url) as api:
        job_id = api.job(ref, namespace=namespace)["Job"]["ID"]
        reply = api.history(job_id, event_type=event_type, execution_id=execution_id, namespace=namespace,
                            next_token=next_token, limit=limit)
    if output_format != "table":
        dump(reply, output_format)
        return
    rows = []
    for item in reply["Items"]:
        states = item["ExecutionState"] or item["JobState"]
        change = f"{states['Previous']} → {states['New']}" if states["Previous"] != states["New"] else states["New"]
        level = "Execution" if item["ExecutionID"] else "Job"
        rows.append([when(item["Time"]), level, short(item["ExecutionID"]) if item["ExecutionID"] else "",
                     item["Event"]["Topic"], change, item["Event"]["Message"][:80]])
    table(["TIME", "LEVEL", "EXECUTION", "TOPIC", "STATE", "EVENT"], rows)
    if reply.get("NextToken"):
        click.echo(f"\nMore: shoal job history {short(job_id)} --next-token {reply['NextToken']}")


@job.command()
@click.argument("ref")
@click.option("--namespace", default="")
@click.option("--reason", default="", help="Why, recorded on the job.")
@click.option("--quiet", is_flag=True, help="Print nothing on success.")
@api_options
def stop(ref: str, namespace: str, reason: str, quiet: bool, api_url: str) -> None:
    """Stop a job: its running executions are cancelled on their agents."""
    with Client(api_url) as api:
        job_id = api.job(ref, namespace=namespace)["Job"]["ID"]
        api.stop(job_id, reason=reason, namespace=namespace)
    if not quiet:
        click.echo(f"Job {short(job_id)} stopped")


@job.command()
@click.argument("ref")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the results (default ./job-<id>).")
@click.option("--raw", is_flag=True, help="Keep each execution's files apart in raw/<executionID>/.")
@click.option("--namespace", default="")
@click.option("--download-timeout-secs", default=300, show_default=True)
@api_options
def get(ref: str, output_dir: Path | None, raw: bool, namespace: str, download_timeout_secs: int,
        api_url: str) -> None:
    """Download a job's results through their presigned URLs and lay them out like `bacalhau job get`."""
    with Client(api_url) as api:
        job_id = api.job(ref, namespace=namespace)["Job"]["ID"]
        items = api.results(job_id, namespace=namespace)
    out = output_dir or Path(f"job-{short(job_id)}")
    download_results(items, out, raw=raw, timeout=download_timeout_secs)
    click.echo(f"Results for job '{short(job_id)}' have been written to...\n{out}")
    sys.stdout.flush()
