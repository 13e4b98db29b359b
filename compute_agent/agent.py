"""The agent: register, then long-poll for work and run each assignment: fetch → execute → publish → complete.

    async with Agent(settings) as agent:
        await agent.run()

The poll is also the heartbeat: it carries the IDs of running executions (renewing their leases) and the
number of free slots; its answer brings new assignments and the executions to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import platform
import random
import threading
import time
from typing import Any

import httpx

from compute_agent.completions import Completions
from compute_agent.errors import AgentError, GatewayError, NotRegistered
from compute_agent.executors import Executor, default_executors
from compute_agent.gateway_client import GatewayClient
from compute_agent.inputs import InputFetcher
from compute_agent.log_shipping import LogShipper
from compute_agent.publish import publish
from compute_agent.settings import AgentSettings
from compute_agent.slots import Slots
from compute_agent.task_output import TaskOutput
from compute_agent.workspace import TaskRun
from shoal import __version__
from shoal.resources import parse_bytes, parse_cpu

log = logging.getLogger("shoal.agent")

PUBLISHERS = ("s3managed", "noop")
INFO_REFRESH = 60.0  # seconds between polls that carry the node's info (engines, labels, capacity)
RUNNING_AFTER = 0.5  # seconds a task runs before the agent reports it Running on its own; see _Running
LAUNCH_WAIT = 1.0  # seconds an agent with no free slot waits for the tasks it just took to start; see _launched
ENDLESS = ("daemon", "service")  # job types whose tasks run until they are stopped: no timeout, no slot waited for


class Agent:
    """One compute node. `executors` defaults to Docker and WASM; `run()` returns when `stop()` is called."""

    def __init__(self, settings: AgentSettings, *, executors: dict[str, Executor] | None = None) -> None:
        self.settings = settings
        self.executors = executors if executors is not None else default_executors()
        self.node_id = ""
        self.poll_seconds = settings.poll_seconds
        self.capacity = settings.capacity()
        self._gateway = GatewayClient(settings.gateway_url, poll_seconds=settings.poll_seconds)
        self._downloads = httpx.AsyncClient(timeout=60)
        self._inputs = InputFetcher(self._downloads, limit=settings.max_input_bytes,
                                    allowed=settings.allowed_local_paths)
        self._running: dict[str, tuple[asyncio.Task[None], threading.Event]] = {}  # those waiting for a slot too
        self._slots = Slots(settings.slots)
        self._completions = Completions(self._gateway, running=lambda: len(self._running), take=self._take,
                                        slots=lambda: None if self._stopping.is_set() else settings.takes)
        self._info_sent = -INFO_REFRESH  # monotonic time the node's info last went with a poll
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Agent:
        await self._register()
        for executor in self.executors.values():
            reaped = await asyncio.to_thread(executor.reap, self.node_id)
            if reaped:
                log.info("removed %d %s leftovers of an earlier run", reaped, executor.name)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._shutdown()
        await self._completions.close()
        await self._gateway.aclose()
        await self._downloads.aclose()

    def stop(self) -> None:
        self._stopping.set()

    # -- registration -----------------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        engines = [name for name, executor in self.executors.items() if executor.available()]
        return {
            "Name": self.settings.name or platform.node(),
            "Labels": {"Architecture": platform.machine(), "Operating-System": platform.system().lower()}
            | self.settings.labels,
            "Engines": engines,
            "Publishers": list(PUBLISHERS),
            "StorageSources": self._inputs.storage_sources,
            "Capacity": self.capacity,
            "Version": __version__,
        }

    async def _register(self) -> None:
        """Reuse the credential saved in the data dir for this gateway, or register anew."""
        saved = self.settings.data_dir / "node.json"
        if saved.exists():
            state = json.loads(saved.read_text())
            if state.get("Gateway") == self.settings.gateway_url:
                self.node_id, self._gateway.credential = state["NodeID"], state["Credential"]
                self.poll_seconds = min(self.settings.poll_seconds, float(state.get("PollSeconds", 20)))
                return
        await self._register_anew()

    async def _register_anew(self) -> None:
        reply = await self._gateway.register(await asyncio.to_thread(self._info), self.settings.token)
        self.node_id = reply["NodeID"]
        self.poll_seconds = min(self.settings.poll_seconds, float(reply["PollSeconds"]))
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = {"Gateway": self.settings.gateway_url, "NodeID": self.node_id,
                 "Credential": reply["Credential"], "PollSeconds": reply["PollSeconds"]}
        saved = self.settings.data_dir / "node.json"
        partial = saved.with_name(".node.json.partial")  # renamed over node.json once whole: never read half-written
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        os.replace(partial, saved)
        log.info("registered as node %s", self.node_id)

    # -- the poll loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                reply = await self._poll_once()
                failures = 0
            except NotRegistered:
                log.warning("the gateway no longer knows this node; registering again")
                await self._retry_later(failures := failures + 1, self._register_anew)
                continue
            except GatewayError as exc:
                failures += 1
                log.warning("poll failed (%s); retrying", exc)
                if exc.status == 403:  # rejected: nothing this node runs will be accepted any more
                    self._cancel_all()
                await self._retry_later(failures)
                continue
            if reply is None:
                continue
            for execution_id in reply.get("Cancel") or []:
                if execution_id in self._running:
                    task, cancel = self._running[execution_id]
                    cancel.set()
                    task.cancel()
            launches = [self._start(assignment) for assignment in reply.get("Executions") or []]
            if launches and len(self._running) >= self.settings.takes:
                await self._launched(launches)

    async def _poll_once(self) -> dict[str, Any] | None:
        """One long-poll (None when the agent stops meanwhile). It says how many executions the node takes at once
        (its slots and its queue), so the gateway counts the free slots itself: a slot that frees during the poll
        (the completion is on the gateway) is filled by this same poll, with no need to drop it and ask again. What
        the node says about itself goes along with the first poll and then every INFO_REFRESH seconds."""
        # executions the gateway has seen end may still be cleaning up here, so more may be running than slots
        free = max(0, self.settings.takes - len(self._running))
        info: dict[str, Any] = {"Slots": self.settings.takes}
        if time.monotonic() - self._info_sent >= INFO_REFRESH:
            info |= await asyncio.to_thread(self._info)
            self._info_sent = time.monotonic()
        poll = asyncio.create_task(self._gateway.poll(info, list(self._running), free, self.poll_seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if poll in done:
            return poll.result()
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError, GatewayError):
            await poll
        return None

    async def _retry_later(self, failures: int, action: Any = None) -> None:
        delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        if action is not None and not self._stopping.is_set():
            with contextlib.suppress(GatewayError):
                await action()

    # -- executions -------------------------------------------------------------------------------------

    async def _take(self, assignments: list[dict[str, Any]]) -> None:
        """Start what a completion took for its slot; when the agent stops meanwhile, hand it back at once."""
        for assignment in assignments:
            if not self._stopping.is_set():
                self._start(assignment)
                continue
            with contextlib.suppress(AgentError):
                await self._gateway.fail(assignment["ExecutionID"], "the agent shut down before the execution started")

    async def _launched(self, launches: list[asyncio.Event]) -> None:
        """With no slot left free, the next poll only renews leases and hears of cancels (a completion fills the
        slot it frees): the tasks just taken start first, instead of sharing the CPU and the GIL with it. At most
        LAUNCH_WAIT seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LAUNCH_WAIT):
                for launched in launches:
                    await launched.wait()

    def _start(self, assignment: dict[str, Any]) -> asyncio.Event:
        """Run an assignment; the event is set once its task runs or waits for a slot, or the execution has ended
        without."""
        execution_id = assignment["ExecutionID"]
        cancel, launched = threading.Event(), asyncio.Event()
        task = asyncio.create_task(self._execute(assignment, cancel, launched), name=execution_id)
        self._running[execution_id] = (task, cancel)

        def finished(_: asyncio.Task[None]) -> None:
            self._running.pop(execution_id, None)
            launched.set()
            self._completions.changed()

        task.add_done_callback(finished)
        return launched

    def _task_run(self, assignment: dict[str, Any]) -> TaskRun:
        spec = assignment["Task"]
        execution_id = assignment["ExecutionID"]
        system = {
            "JOB_ID": assignment["JobID"],
            "EXECUTION_ID": execution_id,
            "JOB_TYPE": assignment["JobType"],
            "PARTITION_INDEX": str(assignment["PartitionIndex"]),
            "PARTITION_COUNT": str(assignment["PartitionCount"]),
        }
        env = dict(spec.get("Env") or {})
        env |= {f"BACALHAU_{k}": v for k, v in system.items()}
        env |= {f"SHOAL_{k}": v for k, v in system.items()} | {"SHOAL_NODE_ID": self.node_id}
        timeouts = spec.get("Timeouts") or {}
        resources = spec.get("Resources") or {}
        return TaskRun(
            execution_id=execution_id,
            node_id=self.node_id,
            engine=spec["Engine"]["Type"],
            params=spec["Engine"].get("Params") or {},
            env=env,
            root=self.settings.data_dir / "executions" / execution_id,
            timeout=None if assignment["JobType"] in ENDLESS else
            float(timeouts.get("ExecutionTimeout") or timeouts.get("TotalTimeout") or 0) or None,
            cpu=parse_cpu(resources.get("CPU") or self.settings.default_cpu),
            memory=parse_bytes(resources.get("Memory") or self.settings.default_memory),
            pids_limit=self.settings.pids_limit,
            max_output_bytes=self.settings.max_output_bytes,
        )

    async def _execute(self, assignment: dict[str, Any], cancel: threading.Event, launched: asyncio.Event) -> None:
        execution_id = assignment["ExecutionID"]
        run = self._task_run(assignment)
        run.started = functools.partial(asyncio.get_running_loop().call_soon_threadsafe, launched.set)
        spec = assignment["Task"]
        shipper: LogShipper | None = None
        running: _Running | None = None
        try:
            executor = self.executors.get(run.engine)
            if executor is None:
                raise AgentError(f"this agent has no {run.engine} engine")
            published = (spec.get("Publisher") or {}).get("Type", "s3managed") == "s3managed"
            run.create([(r["Name"], r["Path"]) for r in spec.get("ResultPaths") or []], published)
            # a WASM entry module sent inline goes to the executor as it came: it is never a file of the task's
            entry = str(run.params.get("EntryModule")) if run.engine == "wasm" else None
            await self._inputs.fetch_all(run, spec.get("InputSources") or [], partition=assignment["PartitionIndex"],
                                         partitions=assignment["PartitionCount"], in_memory=entry)
            shipper = LogShipper(self._gateway, execution_id, {"stdout": run.stdout, "stderr": run.stderr})
            shipper.start()
            async with self._slots.hold(endless=assignment["JobType"] in ENDLESS, waiting=launched.set):
                started = time.time_ns()
                # Results to publish take a while after the task: say Running at once (without waiting for the answer)
                running = _Running(self._gateway, execution_id, 0.0 if published else RUNNING_AFTER)
                worker = asyncio.ensure_future(asyncio.to_thread(executor.run, run, cancel))
                try:
                    exit_code = await asyncio.shield(worker)
                except asyncio.CancelledError:  # the task stops before its slot is let go
                    cancel.set()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(worker, 30)
                    raise
            reported = await running.settle()
            logs = await shipper.finish() if not published else []
            if published:  # the results dir is archived: its exit code goes along
                (run.results_dir / "exitCode").write_text(str(exit_code))
                await shipper.close()
                await publish(self._gateway, execution_id, run.results_dir, run.root)
            # the completion fills the slot it frees (the agent's poll waits on), unless the agent stops
            await self._completions.report(execution_id, _outcome(run, exit_code) | {
                "Published": published, "Logs": logs, "StartTime": 0 if reported else started})
            log.info("execution %s completed with exit code %d", execution_id, exit_code)
        except asyncio.CancelledError:
            cancel.set()
            if self._stopping.is_set():
                with contextlib.suppress(AgentError):
                    await self._gateway.fail(execution_id, "the agent shut down during the execution")
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, AgentError) else f"agent error: {exc!r}"
            log.warning("execution %s failed: %s", execution_id, message)
            if running is not None:  # a Running report on its way goes first
                await running.settle()
            with contextlib.suppress(AgentError):
                await self._gateway.fail(execution_id, message)
        finally:
            if running is not None:
                running.drop()
            if shipper is not None:
                with contextlib.suppress(Exception):
                    await shipper.close()
            if run.root.exists():  # a task that published nothing and saved no input made no folder
                await asyncio.to_thread(run.remove)

    def _cancel_all(self) -> None:
        for task, cancel in list(self._running.values()):
            cancel.set()
            task.cancel()

    async def _shutdown(self) -> None:
        self._cancel_all()
        await asyncio.gather(*(task for task, _ in self._running.values()), return_exceptions=True)


class _Running:
    """Tells the gateway an execution runs once it has run for `after` seconds. A shorter task is reported
    Running by its completion, which carries its start time: one request fewer on the way of every short task,
    and its start is not held up by a round trip."""

    def __init__(self, gateway: GatewayClient, execution_id: str, after: float) -> None:
        self._gateway, self._execution_id = gateway, execution_id
        self._sending = False
        self._task = asyncio.create_task(self._report(after))

    async def _report(self, after: float) -> None:
        if after:
            await asyncio.sleep(after)
        self._sending = True
        try:
            await self._gateway.status(self._execution_id, "Running")
        except GatewayError as exc:  # the completion will say so instead
            log.warning("could not report %s as Running: %s", self._execution_id, exc)
            self._sending = False

    async def settle(self) -> bool:
        """Stop waiting to report (a report on its way is let finish); whether the gateway was told."""
        if not self._sending:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self._sending

    def drop(self) -> None:
        """The execution ended otherwise (failed, cancelled): report nothing more."""
        self._task.cancel()


def _head(output: TaskOutput, limit: int = 2048) -> tuple[str, bool]:
    data = output.read(0, limit + 1)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def _outcome(run: TaskRun, exit_code: int) -> dict[str, Any]:
    stdout, stdout_truncated = _head(run.stdout)
    stderr, stderr_truncated = _head(run.stderr)
    return {"ExitCode": exit_code, "Stdout": stdout, "StdoutTruncated": stdout_truncated,
            "Stderr": stderr, "StderrTruncated": stderr_truncated}
