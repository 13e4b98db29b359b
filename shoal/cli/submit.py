"""`shoal docker run` and `shoal wasm run`: a job spec built from flags, submitted, and (by default) waited on."""

from __future__ import annotations

import base64
import mimetypes
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

import click
import yaml

from shoal.cli.logs import print_logs
from shoal.cli.output import api_options, short
from shoal.client import TERMINAL_STATES, Client
from shoal.errors import NotFoundError, ShoalError
from shoal.selector import parse_selector

DEFAULT_INPUT_TARGET = "/inputs"
INLINE_LIMIT = 256 << 10  # bigger files are uploaded, not sent inside the spec


_RUN_OPTIONS = [
    click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the job to finish."),
    click.option("--wait-timeout-secs", default=600, show_default=True),
    click.option("--id-only", is_flag=True, help="Print only the job ID."),
    click.option("-f", "--follow", is_flag=True, help="Print the task's output as it runs, then exit with its state."),
]


def run_options(func: Any) -> Any:
    """How a submitting command waits and reports: shared by `docker run`, `wasm run` and `job run`."""
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


def job_options(func: Any) -> Any:
    """The flags `docker run` and `wasm run` share with Bacalhau's."""
    options = [
        click.option("--name", default="", help="Job name (default: the job ID)."),
        click.option("--namespace", default="default", show_default=True),
        click.option("--count", default=1, show_default=True, help="Number of partitions."),
        click.option("--target", type=click.Choice(["any", "all"]), default="any", show_default=True,
                     help="all: run once on every matching node (an ops job)."),
        click.option("-l", "--labels", multiple=True, metavar="K=V", help="Job labels (repeatable)."),
        click.option("-s", "--constraints", default="", metavar="SELECTOR",
                     help="Node label selector, e.g. 'region=eu,gpu exists,tier in (a,b)'."),
        click.option("-e", "--env", multiple=True, metavar="K=V", help="Task environment variable (repeatable)."),
        click.option("-i", "--input", "inputs", multiple=True, metavar="SRC[:TARGET]",
                     help="An input (repeatable): http(s)://URL, s3://bucket/key or local:///path on the agent "
                          "(shown at TARGET, default /inputs), or a file here (sent with the job, shown at "
                          "TARGET, default /inputs/<name>). Also src=…,dst=…,opt=k=v."),
        click.option("-o", "--output", "outputs", multiple=True, metavar="NAME:PATH",
                     help="A result folder to publish, e.g. outputs:/outputs (repeatable)."),
        click.option("-p", "--publisher", default="s3managed", show_default=True,
                     type=click.Choice(["s3managed", "noop"])),
        click.option("--cpu", default="", help="CPU, e.g. 500m or 2."),
        click.option("--memory", default="", help="Memory, e.g. 512Mb or 2Gb."),
        click.option("--timeout", default=0, help="Execution timeout in seconds (0: none)."),
        click.option("--dry-run", is_flag=True, help="Print the job spec instead of submitting it."),
        *_RUN_OPTIONS,
        api_options,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    result = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} must be KEY=VALUE", param_hint=flag)
        result[key] = item
    return result


def parse_input(value: str, api: Client, namespace: str) -> dict[str, Any]:
    """An InputSource from `-i`: `URI[:TARGET]`, or Bacalhau's `src=URI,dst=TARGET,opt=k=v,…`."""
    opts: dict[str, str] = {}
    if value.startswith(("src=", "source=")):
        parts: dict[str, str] = {}
        for item in value.split(","):
            key, sep, rest = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r} must be KEY=VALUE", param_hint="--input")
            if key == "opt":
                name, _, setting = rest.partition("=")
                opts[name.lower()] = setting
            else:
                parts[key] = rest
        source = parts.get("src") or parts.get("source") or ""
        target = parts.get("dst") or parts.get("target") or parts.get("destination") or ""
    else:
        source, target = split_target(value)
    return input_source(source, target, api, namespace, opts)


def input_source(source: str, target: str, api: Client, namespace: str,
                 opts: dict[str, str] | None = None) -> dict[str, Any]:
    """`http(s)://` downloads, `s3://bucket/key` objects and `local:///path` folders on the agent; a file on
    this machine (a path or `file://`) is sent with the job: inline when small, else uploaded first."""
    opts = opts or {}
    scheme = source.partition("://")[0].lower() if "://" in source else ""
    if scheme in ("http", "https"):
        spec = {"Type": "urlDownload", "Params": {"URL": source}}
    elif scheme == "s3":
        bucket, _, key = source[len("s3://"):].partition("/")
        params = {"Bucket": bucket, "Key": key} | {
            name: opts[option] for option, name in _S3_OPTIONS.items() if option in opts
        }
        spec = {"Type": "s3", "Params": params}
    elif scheme == "local":
        spec = {"Type": "local", "Params": {"SourcePath": source[len("local://"):],
                                            "ReadWrite": opts.get("rw", "").lower() == "true"}}
    elif scheme in ("", "file"):
        path = Path(source[len("file://"):] if scheme else source).expanduser()
        if not path.is_file():
            raise click.BadParameter(f"{source!r}: no such file here (for a path on the agent, use local:///path)",
                                     param_hint="--input")
        target = target or f"{DEFAULT_INPUT_TARGET}/{path.name}"
        return {"Source": client_file(path, api, namespace), "Target": target, "Alias": path.name}
    else:
        raise click.BadParameter(f"{source!r}: inputs are http(s)://, s3://, local:// or a file here",
                                 param_hint="--input")
    return {"Source": spec, "Target": target or DEFAULT_INPUT_TARGET, "Alias": source}


_S3_OPTIONS = {"endpoint": "Endpoint", "region": "Region", "filter": "Filter", "versionid": "VersionID",
               "checksum-256": "ChecksumSHA256"}


def client_file(path: Path, api: Client, namespace: str) -> dict[str, Any]:
    """A file on this machine as an input Source: a data: URL up to INLINE_LIMIT, else a managed upload."""
    if path.stat().st_size <= INLINE_LIMIT:
        return {"Type": "inline", "Params": {"URL": data_url(path)}}
    return api.upload(path, namespace=namespace)


def split_target(value: str) -> tuple[str, str]:
    """`SOURCE:/target` → (SOURCE, /target); a URL's own `://` is not a target."""
    head, sep, tail = value.rpartition(":")
    if sep and head and tail.startswith("/") and not tail.startswith("//"):
        return head, tail
    return value, ""


def data_url(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def build_job(engine: dict[str, Any], sources: list[dict[str, Any]], **opts: Any) -> dict[str, Any]:
    outputs = []
    for value in opts["outputs"]:
        name, sep, path = value.partition(":")
        if not sep:
            raise click.BadParameter(f"{value!r} must be NAME:PATH", param_hint="--output")
        outputs.append({"Name": name, "Path": path})
    task: dict[str, Any] = {
        "Name": "main",
        "Engine": engine,
        "Publisher": {"Type": opts["publisher"]},
        "Env": _pairs(opts["env"], "--env"),
        "InputSources": sources,
        "ResultPaths": outputs,
        "Resources": {"CPU": opts["cpu"], "Memory": opts["memory"]},
        "Timeouts": {"ExecutionTimeout": opts["timeout"]},
    }
    ops = opts["target"] == "all"
    job = {"Type": "ops" if ops else "batch", "Namespace": opts["namespace"], "Count": 0 if ops else opts["count"],
           "Labels": _pairs(opts["labels"], "--labels"), "Tasks": [task]}
    if opts["constraints"]:
        job["Constraints"] = parse_selector(opts["constraints"], "--constraints")
    if opts["name"]:
        job["Name"] = opts["name"]
    return job


def submit_and_report(api: Client, job: dict[str, Any], *, wait: bool, id_only: bool, wait_timeout: float,
                      follow: bool = False, dry_run: bool = False, force: bool = False) -> None:
    """Submit, then wait and summarise like `bacalhau job run`, or with `follow` print the task's output as it
    runs; a job that does not complete exits 1."""
    if dry_run:
        click.echo(yaml.safe_dump(job, sort_keys=False).rstrip())
        return
    reply = api.submit(job, force=force)
    job_id = reply["JobID"]
    if id_only:
        click.echo(job_id)
    else:
        for warning in reply.get("Warnings") or []:
            click.echo(f"Warning: {warning}", err=True)
        version = f" (version {reply['JobVersion']})" if reply.get("JobVersion", 1) > 1 else ""
        click.echo(f"Job successfully submitted. Job ID: {job_id}{version}")
    if follow:
        _follow(api, job_id, wait_timeout)
        _exit_on_failure(api.wait(job_id, timeout=wait_timeout)["State"])
        return
    if not wait:
        return
    if not id_only:
        click.echo("Checking job status... (Ctrl-C stops waiting; the job keeps running)")
    final = api.wait(job_id, timeout=wait_timeout)
    state = final["State"]
    if id_only:
        _exit_on_failure(state)
        return
    click.echo(f"Job {short(job_id)} {state['StateType']}" + (f": {state['Message']}" if state["Message"] else ""))
    for execution in api.executions(job_id):
        output = execution.get("RunOutput")
        if output and execution["ComputeState"]["StateType"] == "Completed":
            label = f"partition {execution['PartitionIndex']}, exit code {output['ExitCode']}"
            click.echo(f"--- stdout ({label}) ---\n{output['Stdout'].rstrip()}")
            if output.get("stderr"):
                click.echo(f"--- stderr ---\n{output['stderr'].rstrip()}")
    click.echo(f"\nTo get more details about the run:\n\tshoal job describe {short(job_id)}")
    click.echo(f"To download the results:\n\tshoal job get {short(job_id)}")
    _exit_on_failure(state)


def _follow(api: Client, job_id: str, timeout: float) -> None:
    """Print the job's output live; a queued job is waited on until an execution exists or the job ends."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            print_logs(api, job_id, follow=True)
            return
        except NotFoundError:
            if api.job(job_id)["Job"]["State"]["StateType"] in TERMINAL_STATES or time.monotonic() > deadline:
                return
            time.sleep(0.25)


def _exit_on_failure(state: dict[str, Any]) -> None:
    if state["StateType"] != "Completed":
        click.echo(f"Error: job {state['StateType'].lower()}: {state['Message']}", err=True)
        sys.exit(1)


@click.group()
def docker() -> None:
    """Run Docker jobs."""


@docker.command("run", context_settings={"ignore_unknown_options": False})
@job_options
@click.option("--entrypoint", multiple=True, help="Override the image's entrypoint (repeatable for each word).")
@click.option("-w", "--workdir", default="", help="Working directory inside the container.")
@click.argument("image")
@click.argument("command", nargs=-1)
def docker_run(image: str, command: tuple[str, ...], entrypoint: tuple[str, ...], workdir: str, api_url: str,
               **opts: Any) -> None:
    """Run IMAGE with COMMAND (after --), e.g. `shoal docker run busybox -- echo hello`."""
    engine = {"Type": "docker", "Params": {"Image": image, "Entrypoint": list(entrypoint),
                                           "Parameters": list(command), "WorkingDirectory": workdir}}
    with Client(api_url) as api:
        job = build_job(engine, [parse_input(value, api, opts["namespace"]) for value in opts["inputs"]], **opts)
        submit_and_report(api, job, wait=opts["wait"], id_only=opts["id_only"],
                          wait_timeout=opts["wait_timeout_secs"], follow=opts["follow"], dry_run=opts["dry_run"])


@click.group()
def wasm() -> None:
    """Run WebAssembly (WASI) jobs."""


@wasm.command("run")
@job_options
@click.option("--entry-point", default="_start", show_default=True, help="The exported function to call.")
@click.argument("module")
@click.argument("args", nargs=-1)
def wasm_run(module: str, args: tuple[str, ...], entry_point: str, api_url: str, **opts: Any) -> None:
    """Run MODULE (a .wasm file here, sent with the job; or an http(s):// or s3:// URL) with ARGS.
    MODULE:/target sets where the task sees it."""
    source, target = split_target(module)
    with Client(api_url) as api:
        if "://" not in source or source.startswith("file://"):
            path = Path(source.removeprefix("file://")).expanduser()
            if not path.is_file():
                raise ShoalError(f"{source}: no such WASM module file")
            target = target or str(PurePosixPath("/app") / path.name)
        entry = input_source(source, target or "/app", api, opts["namespace"])
        engine = {"Type": "wasm", "Params": {"EntryModule": entry["Target"], "Entrypoint": entry_point,
                                             "Parameters": list(args)}}
        job = build_job(engine, [entry] + [parse_input(value, api, opts["namespace"]) for value in opts["inputs"]],
                        **opts)
        submit_and_report(api, job, wait=opts["wait"], id_only=opts["id_only"],
                          wait_timeout=opts["wait_timeout_secs"], follow=opts["follow"], dry_run=opts["dry_run"])
