"""`shoal node list|describe|approve|reject|delete`."""

from __future__ import annotations

import click

from shoal.cli.output import api_options, dump, output_option, short, table, when
from shoal.client import Client


@click.group()
def node() -> None:
    """Inspect and manage compute nodes."""


@node.command("list")
@click.option("--filter-approval", type=click.Choice(["PENDING", "APPROVED", "REJECTED"]), default=None)
@click.option("--filter-status", type=click.Choice(["CONNECTED", "DISCONNECTED"]), default=None)
@output_option("table")
@api_options
def list_nodes(filter_approval: str | None, filter_status: str | None, output_format: str, api_url: str) -> None:
    """List nodes with their state, labels and engines."""
    with Client(api_url) as api:
        nodes = api.nodes(filter_approval=filter_approval or "", filter_status=filter_status or "")
    if output_format != "table":
        dump({"Nodes": nodes}, output_format)
        return
    rows = []
    for item in nodes:
        info = item["Info"]
        labels = " ".join(f"{k}={v}" for k, v in sorted(info["Labels"].items()))
        engines = ",".join(info["ComputeNodeInfo"]["ExecutionEngines"])
        rows.append([short(info["NodeID"]), info.get("Name", ""), item["ConnectionState"]["Status"],
                     item["Membership"], engines, when(item["ConnectionState"]["LastHeartbeat"]), labels])
    table(["ID", "NAME", "STATUS", "APPROVAL", "ENGINES", "LAST HEARTBEAT", "LABELS"], rows)


@node.command()
@click.argument("ref")
@output_option("yaml")
@api_options
def describe(ref: str, output_format: str, api_url: str) -> None:
    """Show one node (by ID or ID prefix)."""
    with Client(api_url) as api:
        found = api.node(ref)
    dump(found, "json" if output_format == "json" else "yaml")


def _action(name: str, done: str) -> click.Command:
    @click.command(name, help=f"{name.capitalize()} a node (by ID or ID prefix).")
    @click.argument("ref")
    @click.option("-m", "--message", default="", help="Why, for the record.")
    @api_options
    def command(ref: str, message: str, api_url: str) -> None:
        with Client(api_url) as api:
            node_id = api.node(ref)["Info"]["NodeID"]
            api.node_action(node_id, name, message)
        click.echo(f"Node {short(node_id)} {done}")

    return command


for _name, _done in (("approve", "approved"), ("reject", "rejected"), ("delete", "deleted")):
    node.add_command(_action(_name, _done))


@node.group("join-token")
def join_token() -> None:
    """Expiring tokens that let new compute nodes register (shoal agent --token)."""


@join_token.command("create")
@click.option("--expires-in", default="1h", show_default=True, help="Lifetime: 30m, 1h, 7d…")
@api_options
def create_join_token(expires_in: str, api_url: str) -> None:
    """Create a join token; its secret is printed once, as the last line."""
    from shoal.cli.auth import duration

    with Client(api_url) as api:
        made = api.create_join_token(expires_in=duration(expires_in))
    click.echo(f"Join token {made['ID']} expires {when(made['ExpireTime'])} UTC; "
               "agents join with: shoal agent --gateway URL --token SECRET", err=True)
    click.echo(made["Secret"])
