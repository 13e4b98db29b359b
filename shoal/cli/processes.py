"""`shoal serve`, `shoal agent` and `shoal devstack`: the long-running processes.

The services are imported inside each command, so the client verbs load neither of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from shoal.cli.output import api_options, dump, output_option
from shoal.client import Client
from shoal.resources import parse_bytes, parse_cpu

if TYPE_CHECKING:
    from compute_agent.inputs import AllowedPath

LABEL_HELP = "A node label K=V (repeatable)."


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        for part in value.split(","):
            key, sep, item = part.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{part!r} must be KEY=VALUE", param_hint="--labels")
            labels[key.strip()] = item.strip()
    return labels


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _stop_on_signals(stop: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def _uvicorn_server(settings: Any) -> Any:
    import uvicorn

    from gateway import create_app
    from gateway.errors import GatewayError

    try:
        app = create_app(settings)
    except GatewayError as exc:  # the configuration or the database schema: say why, and what fixes it
        raise click.ClickException(exc.message + (f"\nHint: {exc.hint}" if exc.hint else "")) from None
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=5, lifespan="on")
    return uvicorn.Server(config)


@click.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 1234).")
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="Database and objects (~/.shoal).")
@click.option("--config", "config_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Users, API keys, OIDC and the agents' JoinToken (YAML; also SHOAL_CONFIG).")
@click.option("-v", "--verbose", is_flag=True)
def serve(host: str | None, port: int | None, data_dir: Path | None, config_file: str | None, verbose: bool) -> None:
    """Run the gateway."""
    from gateway import Settings

    _logging(verbose)
    settings = Settings.from_env(host=host, port=port, data_dir=data_dir, config=config_file)

    async def main() -> None:
        from gateway import gc_freezer

        server = _uvicorn_server(settings)
        freezer = asyncio.create_task(gc_freezer.run_forever())
        _stop_on_signals(lambda: setattr(server, "should_exit", True))
        click.echo(f"Shoal gateway on {settings.base_url} (data in {settings.data_dir})", err=True)
        try:
            await server.serve()
        finally:
            freezer.cancel()

    _run(main())


@click.group(invoke_without_command=True)
@click.option("--gateway", "gateway_url", default=None,
              help="The gateway's URL, or several replicas' comma-separated (runs a compute agent).")
@click.option("--token", default="", envvar="SHOAL_JOIN_TOKEN", help="Join token, when the gateway requires one.")
@click.option("--labels", multiple=True, help=LABEL_HELP)
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="Work dir (~/.shoal/agent).")
@click.option("--max-executions", default=0, help="Tasks run at once (default: one per CPU).")
@click.option("--queue", default=0, type=click.IntRange(min=0),
              help="Executions taken ahead of the free slots, which start as one frees (default 0).")
@click.option("--cpu", default="", help="CPU cores to offer, e.g. 2 or 1500m (default: 80% of the host).")
@click.option("--memory", default="", help="Memory to offer, e.g. 4Gb (default: 80% of the host).")
@click.option("--disk", default="", help="Disk to offer, e.g. 20Gb (default: 80% free space of --data-dir).")
@click.option("--name", default="", help="Node name (default: the host name).")
@click.option("--allow-local-path", "allowed_paths", multiple=True, metavar="PATH[:rw]",
              help="A host folder `local` inputs may mount, read-only unless :rw (repeatable).")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def agent(ctx: click.Context, gateway_url: str | None, token: str, labels: tuple[str, ...], data_dir: Path | None,
          max_executions: int, queue: int, cpu: str, memory: str, disk: str, name: str, allowed_paths: tuple[str, ...],
          verbose: bool) -> None:
    """Run a compute agent (`shoal agent --gateway URL`), or ask a gateway about itself (alive, version)."""
    if ctx.invoked_subcommand is not None:
        return
    if not gateway_url:
        raise click.UsageError("shoal agent needs --gateway URL (or a subcommand: alive, version)")
    from compute_agent import Agent, AgentSettings

    _logging(verbose)
    settings = AgentSettings(gateway_url=gateway_url, token=token, labels=_labels(labels), name=name,
                             data_dir=(data_dir or Path("~/.shoal/agent")).expanduser(),
                             max_executions=max_executions, queue=queue, cpu=parse_cpu(cpu) if cpu else 0.0,
                             memory=parse_bytes(memory) if memory else 0, disk=parse_bytes(disk) if disk else 0,
                             allowed_local_paths=_allowed_paths(allowed_paths))

    async def main() -> None:
        async with Agent(settings) as node:
            _stop_on_signals(node.stop)
            click.echo(f"Shoal agent {node.node_id} polling {gateway_url}", err=True)
            await node.run()

    _run(main())


@agent.command()
@output_option("json")
@api_options
def alive(output_format: str, api_url: str) -> None:
    """Is the gateway alive?"""
    with Client(api_url) as api:
        dump(api.alive(), output_format)


@agent.command()
@output_option("json")
@api_options
def version(output_format: str, api_url: str) -> None:
    """The gateway's version."""
    with Client(api_url) as api:
        dump(api.version(), output_format)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=1234, show_default=True)
@click.option("--data-dir", default=None, type=click.Path(path_type=Path), help="State dir (~/.shoal/devstack).")
@click.option("--agents", "agent_count", default=1, show_default=True, help="Compute agents to start.")
@click.option("--agent-labels", multiple=True, help="Labels for every agent, K=V (repeatable).")
@click.option("--allow-local-path", "allowed_paths", multiple=True, metavar="PATH[:rw]",
              help="A host folder the agents' `local` inputs may mount, read-only unless :rw (repeatable).")
@click.option("-v", "--verbose", is_flag=True)
def devstack(host: str, port: int, data_dir: Path | None, agent_count: int, agent_labels: tuple[str, ...],
             allowed_paths: tuple[str, ...], verbose: bool) -> None:
    """A gateway and compute agents in one process, on the embedded defaults (SQLite, local object store)."""
    from compute_agent import Agent, AgentSettings
    from gateway import Settings

    _logging(verbose)
    root = (data_dir or Path("~/.shoal/devstack")).expanduser()
    settings = Settings.from_env(host=host, port=port, data_dir=root / "gateway")
    labels = _labels(agent_labels)

    async def main() -> None:
        server = _uvicorn_server(settings)
        serving = asyncio.create_task(server.serve())
        await _wait_until_alive(settings.base_url, serving)
        agents = [
            Agent(AgentSettings(gateway_url=settings.base_url, data_dir=root / f"agent-{index}",
                                labels=labels | {"devstack-agent": str(index)}, name=f"devstack-{index}",
                                poll_seconds=settings.poll_seconds, token=settings.join_token,
                                allowed_local_paths=_allowed_paths(allowed_paths)))
            for index in range(agent_count)
        ]
        async with contextlib.AsyncExitStack() as stack:
            for node in agents:
                await stack.enter_async_context(node)
            running = [asyncio.create_task(node.run()) for node in agents]

            def stop() -> None:
                for node in agents:
                    node.stop()
                server.should_exit = True

            _stop_on_signals(stop)
            click.echo(f"Shoal devstack: gateway and {agent_count} agent(s) ready.")
            click.echo(f"export SHOAL_API_URL={settings.base_url}", err=False)
            click.echo(f"API: {settings.base_url}", err=False)
            await asyncio.gather(serving, *running)

    _run(main())


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a gateway, an agent or the devstack on uvloop, a faster event loop than asyncio's own."""
    import uvloop

    uvloop.run(main)


def _allowed_paths(values: tuple[str, ...]) -> tuple[AllowedPath, ...]:
    from compute_agent.inputs import AllowedPath

    try:
        return tuple(AllowedPath.parse(value) for value in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-local-path") from exc


async def _wait_until_alive(base_url: str, serving: asyncio.Task[Any], deadline: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    async with httpx.AsyncClient(timeout=2) as http:
        while loop.time() < end:
            if serving.done():
                serving.result()
                raise click.ClickException(f"the gateway stopped before it answered on {base_url}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{base_url}/api/v1/agent/alive")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise click.ClickException(f"the gateway did not answer on {base_url} within {deadline:.0f}s")
