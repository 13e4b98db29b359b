"""Printing objects as a table, JSON or YAML, and the options every client verb shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import yaml

from shoal.client import api_url_from_env

F = TypeVar("F", bound=Callable[..., Any])


def api_options(func: F) -> F:
    """`--api-url` (or SHOAL_API_URL) on every verb that talks to a gateway."""
    return click.option(
        "--api-url", default=api_url_from_env, show_default="SHOAL_API_URL or http://127.0.0.1:1234",
        help="The gateway's base URL.",
    )(func)


def output_option(default: str) -> Callable[[F], F]:
    return click.option("--output", "output_format", type=click.Choice(["table", "json", "yaml"]), default=default,
                        show_default=True, help="How to print the result.")


def dump(data: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def when(nanoseconds: int) -> str:
    return datetime.fromtimestamp(nanoseconds / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def short(identifier: str) -> str:
    """`j-1234abcd` for `j-1234abcd-…`: Bacalhau's short form."""
    return identifier.split("-")[0] + "-" + identifier.split("-")[1] if identifier.count("-") > 1 else identifier
