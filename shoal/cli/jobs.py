"""`shoal job run|describe|list|executions|get`."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import BinaryIO

import click

from shoal.cli.output import api_options, dump, output_option, short, table, when
from shoal.cli.submit import run_options, submit_and_report
from shoal.client import Client
from shoal.documents import load_document
from shoal.errors import SpecError
from shoal.results import download_results
from shoal.templating import env_values, job_template, job_templates, render


@click.group()
def job() -> None:
    """Submit and inspect jobs."""


@job.command("run")
@click.argument("file", type=click.File("rb"), required=False)
@run_options
@click.option("--force", is_flag=True, help="Submit even if the spec is the same as the job's latest version.")
@click.option("--dry-run", is_flag=True, help="Validate and show how the spec differs from the job's latest version.")
@click.option("--template", "template_name", default="", metavar="NAME",
              help="Run the named template (see `shoal job templates`) instead of FILE.")
@click.option("-V", "--template-vars", multiple=True, metavar="K=V",
              help="A template variable (repeatable; K1=V1,K2=V2 also sets two, as in Bacalhau).")
@click.option("-E", "--template-envs", default="", metavar="REGEX",
              help="Environment variables whose names match REGEX become template variables ('*': all).")
@click.option("--no-template", is_flag=True, help="Send the spec as it is, without rendering {{ }} actions.")
@api_options
def run(file: BinaryIO | None, wait: bool, wait_timeout_secs: int, id_only: bool, follow: bool, force: bool,
        dry_run: bool, template_name: str, template_vars: tuple[str, ...], template_envs: str, no_template: bool,
        api_url: str) -> None:
    """Submit a job spec (JSON or YAML; `-` or nothing reads stdin). A spec whose Name is an existing job's
    makes that job's next version.

    The spec is a Go text/template: `{{.name}}` is the variable given with `-V name=VALUE` (or from the
    environment with -E), and a variable that is not given is an error."""
    if template_name and file is not None:
        raise click.UsageError("give either FILE or --template, not both")
    if template_name:
        data = job_template(template_name).text.encode()
    else:
        data = (file if file is not None else sys.stdin.buffer).read()
    if not no_template:
        data = _render(data, _template_values(template_vars, template_envs))
    spec = load_document(data)
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


def _render(data: bytes, values: dict[str, str]) -> bytes:
    """The spec rendered with `values`; a spec without `{{` is left as it is."""
    if b"{{" not in data:
        return data
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise SpecError("", "a templated spec must be UTF-8 text") from None
    return render(text, values).encode()


def _template_values(pairs: tuple[str, ...], env_pattern: str) -> dict[str, str]:
    """The `-E` environment variables, then the `-V` ones, which win as in Bacalhau."""
    try:
        values = env_values(env_pattern, os.environ) if env_pattern else {}
    except re.error as exc:
        raise click.BadParameter(f"{env_pattern!r} is not a regular expression: {exc}",
                                 param_hint="'-E' / '--template-envs'") from None
    return values | _template_vars(pairs)


_PAIR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _template_vars(pairs: tuple[str, ...]) -> dict[str, str]:
    """`-V` values. Like Bacalhau's, `a=1,b=2` sets two variables, but only when every comma-separated part
    starts with NAME=, so that a value such as `args=cat, /inputs/x` keeps its comma."""
    values: dict[str, str] = {}
    for pair in pairs:
        parts = pair.split(",")
        for part in parts if all(_PAIR.match(p) for p in parts) else [pair]:
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{pair!r} must be NAME=VALUE", param_hint="'-V' / '--template-vars'")
            values[key] = value
    return values


@job.command("templates")
@click.argument("name", required=False)
@output_option("table")
def list_templates(name: str | None, output_format: str) -> None:
    """List the named job templates for `shoal job run --template`, or print the template NAME."""
    if name:
        click.echo(job_template(name).text.rstrip())
        return
    items = job_templates()
    if output_format != "table":
        dump({"Items": [{"Name": t.name, "Description": t.description, "Variables": t.variables} for t in items]},
             output_format)
        return
    table(["NAME", "VARIABLES", "DESCRIPTION"], [[t.name, ",".join(t.variables), t.description] for t in items])


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
