"""`shoal job logs`: print or follow an execution's output."""

from __future__ import annotations

import sys

import click

from shoal.cli.output import api_options
from shoal.client import Client


def print_logs(api: Client, ref: str, *, follow: bool, execution_id: str = "", tail: int = 0,
               namespace: str = "") -> None:
    """stdout lines to stdout, stderr lines to stderr, as they are shipped."""
    for entry in api.logs(ref, follow=follow, execution_id=execution_id, tail=tail, namespace=namespace):
        stream = sys.stderr if entry["Type"] == 2 else sys.stdout
        stream.write(entry["Line"] + "\n")
        stream.flush()


@click.command()
@click.argument("ref")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the task runs, until it ends.")
@click.option("-e", "--execution-id", default="", help="Which execution (default: the job's current one).")
@click.option("-t", "--tail", default=0, help="Only the last N lines so far.")
@click.option("--namespace", default="")
@api_options
def logs(ref: str, follow: bool, execution_id: str, tail: int, namespace: str, api_url: str) -> None:
    """Print a job's output (stdout to stdout, stderr to stderr)."""
    with Client(api_url) as api:
        print_logs(api, ref, follow=follow, execution_id=execution_id, tail=tail, namespace=namespace)
