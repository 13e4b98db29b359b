"""The `shoal` command: the gateway and agent processes, and the client verbs."""

from __future__ import annotations

import sys

import click

from shoal import __version__
from shoal.cli import auth, db, jobs, logs, nodes, processes, submit
from shoal.errors import ShoalError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shoal")
def cli() -> None:
    """Run Docker and WebAssembly jobs where the data lives."""


cli.add_command(processes.devstack)
cli.add_command(processes.serve)
cli.add_command(processes.agent)
cli.add_command(submit.docker)
cli.add_command(submit.wasm)
jobs.job.add_command(logs.logs)
cli.add_command(jobs.job)
cli.add_command(nodes.node)
cli.add_command(auth.auth)
cli.add_command(auth.token)
cli.add_command(auth.audit)
cli.add_command(db.db)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ShoalError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
