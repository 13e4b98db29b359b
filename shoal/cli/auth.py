"""`shoal auth hash-password`, `shoal token create|list|revoke` and `shoal audit`."""

from __future__ import annotations

import re

import click

from shoal.cli.output import api_options, dump, output_option, table, when
from shoal.client import Client

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """Seconds in `90`, `90s`, `30m`, `24h` or `7d`."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 24h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@click.group()
def auth() -> None:
    """Credentials for the gateway's config file."""


@auth.command("hash-password")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="The password (asked for when not given; read from stdin when piped).")
def hash_password(password: str) -> None:
    """Print a bcrypt hash to use as a user's Password in `shoal serve --config FILE`."""
    from gateway.auth_config import hash_password as make_hash

    click.echo(make_hash(password))


@click.group()
def token() -> None:
    """Scoped API tokens for CI/CD (shown once; send as `Authorization: Bearer` or SHOAL_API_KEY)."""


@token.command("create")
@click.option("--name", required=True, help="What the token is for, e.g. ci.")
@click.option("--capabilities", required=True, help="Comma-separated, e.g. read:job,write:job.")
@click.option("--namespace", default="", help="The one namespace it may use (default: yours).")
@click.option("--expires-in", default="24h", show_default=True, help="Lifetime: 30m, 24h, 7d…")
@api_options
def create(name: str, capabilities: str, namespace: str, expires_in: str, api_url: str) -> None:
    """Create a token; its secret is printed once, as the last line."""
    with Client(api_url) as api:
        reply = api.create_token(name=name, capabilities=[c.strip() for c in capabilities.split(",") if c.strip()],
                                 namespace=namespace, expires_in=duration(expires_in))
    made = reply["Token"]
    click.echo(f"Token {made['ID']} ({made['Name']}): {', '.join(made['Capabilities'])} in namespace "
               f"{made['Namespace']}, expires {when(made['ExpireTime'])} UTC", err=True)
    click.echo("Keep the secret below: it is not shown again.", err=True)
    click.echo(reply["Secret"])


@token.command("list")
@output_option("table")
@api_options
def list_tokens(output_format: str, api_url: str) -> None:
    """Tokens you made (all of them for an administrator); never their secrets."""
    with Client(api_url) as api:
        items = api.tokens()
    if output_format != "table":
        dump({"Items": items}, output_format)
        return
    table(["ID", "NAME", "PREFIX", "CAPABILITIES", "NAMESPACE", "EXPIRES", "LAST USED", "ACTIVE"],
          [[t["ID"], t["Name"], t["Prefix"] + "…", ",".join(t["Capabilities"]), t["Namespace"], when(t["ExpireTime"]),
            when(t["LastUsed"]) if t["LastUsed"] else "never", "yes" if t["Active"] else "no"] for t in items])


@token.command("revoke")
@click.argument("token_id")
@api_options
def revoke(token_id: str, api_url: str) -> None:
    """Revoke a token: it stops working at once."""
    with Client(api_url) as api:
        revoked = api.revoke_token(token_id)
    click.echo(f"Token {revoked['ID']} ({revoked['Name']}) revoked")


@click.command()
@click.option("--actor", default="", help="Only what this user or token did.")
@click.option("--action", default="", help="Only this action, e.g. job.submit, token.create, node.approve.")
@click.option("--limit", default=100, show_default=True)
@output_option("table")
@api_options
def audit(actor: str, action: str, limit: int, output_format: str, api_url: str) -> None:
    """Who submitted, stopped, approved, created or revoked what, and when (administrators only)."""
    with Client(api_url) as api:
        reply = api.audit(actor=actor, action=action, limit=limit)
    if output_format != "table":
        dump(reply, output_format)
        return
    table(["TIME", "ACTOR", "ACTION", "TARGET", "NAMESPACE", "DETAIL"],
          [[when(e["Time"]), e["Actor"], e["Action"], e["Target"], e["Namespace"], e["Detail"][:60]]
           for e in reply["Items"]])
    if reply["NextToken"]:
        click.echo(f"(more after entry {reply['NextToken']})", err=True)
