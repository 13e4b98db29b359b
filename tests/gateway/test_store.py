"""The job and execution store (gateway/store.py) on a real SQLite file."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlmodel import Session, col, select

from compute_agent.inputs import STORAGE_SOURCES
from gateway import history
from gateway import statements as sql
from gateway.audit import AuditLog
from gateway.db import make_engine
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from gateway.models import DesiredState, ExecutionRecord, ExecutionState, JobState, NodeConnection, NodeMembership
from gateway.store import Completion, NodeInfo, RunOutcome, Store
from shoal.selector import parse_selector
from shoal.spec import parse_job
from tests.conftest import ON_POSTGRES, wait_for

WASM_DATA = "data:application/wasm;base64,AGFzbQEAAAA="


def wasm(count: int = 1, name: str = "", namespace: str = "default") -> Any:
    job, _ = parse_job({
        "Name": name,
        "Namespace": namespace,
        "Type": "batch",
        "Count": count,
        "Tasks": [{
            "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/m.wasm"}},
            "InputSources": [{"Target": "/app/m.wasm", "Source": {"Type": "inline", "Params": {"URL": WASM_DATA}}}],
        }],
    })
    return job


def docker(count: int = 1) -> Any:
    job, _ = parse_job({"Type": "batch", "Count": count,
                        "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "busybox"}}}]})
    return job


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine, lease_seconds=60, max_attempts=3, queue_timeout=3600)


def node(store: Store, *engines: str) -> Any:
    record, _ = store.register_node(NodeInfo(engines=list(engines or ["wasm"]), publishers=["s3managed"],
                                                 storage_sources=STORAGE_SOURCES))
    return record


def by_id(store: Store, job_id: str) -> dict[str, ExecutionRecord]:
    return {execution.id: execution for execution in store.executions(job_id)}


def job_state(store: Store, job_id: str) -> tuple[str, str]:
    job = store.find_job("default", job_id)
    return job.state, job.state_message


# -- submit -----------------------------------------------------------------------------------------------


def test_submit_creates_one_new_execution_per_partition(store: Store) -> None:
    record = store.submit(wasm(count=3))
    assert record.id.startswith("j-")
    assert record.state == JobState.QUEUED  # no node yet
    assert record.name == record.id  # no Name: the ID
    executions = store.executions(record.id)
    assert [e.partition_index for e in executions] == [0, 1, 2]
    assert {e.compute_state for e in executions} == {ExecutionState.NEW}
    assert {e.desired_state for e in executions} == {DesiredState.RUNNING}
    assert {e.attempt for e in executions} == {1}
    assert {e.node_id for e in executions} == {None}
    assert {e.engine for e in executions} == {"wasm"}
    assert len({e.id for e in executions}) == 3


def test_submit_count_zero_is_completed_with_no_executions(store: Store) -> None:
    record = store.submit(wasm(count=0))
    assert store.executions(record.id) == []
    assert job_state(store, record.id)[0] == JobState.COMPLETED


def test_scheduling_reads_every_node_a_page_at_a_time(store: Store) -> None:
    """Nodes are read NODES_PER_READ at a time: a job no node can run names the reason of each, past the first
    pages."""
    nodes = 2 * sql.NODES_PER_READ + 1
    ids = {node(store, "docker").id for _ in range(nodes)}
    job = store.submit(wasm())
    state, message = job_state(store, job.id)
    assert state == JobState.QUEUED
    assert f"available: {nodes}, suitable: 0" in message
    assert {line.split(":")[0].removeprefix("• Node ") for line in message.splitlines()[1:]} == ids


def test_scheduling_looks_at_the_oldest_nodes_first(store: Store, engine: Engine) -> None:
    """The node that fits, registered before many that do not, is in the first page read (and the page is a range
    of the nodes' index by age, not a sort of them all)."""
    node(store, "wasm")
    for _ in range(3 * sql.NODES_PER_READ):
        node(store, "docker")
    _, statements = executed(engine, lambda: store.submit(wasm()))
    pages = [(text, params) for text, params in statements if text.lstrip().startswith("SELECT nodes.")]
    assert len(pages) == 1
    if not ON_POSTGRES:
        with engine.connect() as connection:
            plan = [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + pages[0][0], pages[0][1])]
        assert any("ix_nodes_age" in step for step in plan) and not any("TEMP B-TREE" in step for step in plan), plan


def test_a_batch_of_like_jobs_reads_the_nodes_once(store: Store, engine: Engine) -> None:
    """Scheduling judges each kind of task against the nodes once per transaction; a job of another kind still
    gets its own judgement (here: no node runs docker, so it is queued for one while the wasm jobs wait for the
    node)."""
    node(store, "wasm")
    jobs = [wasm() for _ in range(5)] + [docker()]
    records, statements = executed(engine, lambda: store.submit_all(jobs))
    pages = [text for text, _ in statements if text.lstrip().startswith("SELECT nodes.")]
    assert len(pages) == 2, pages
    assert [record.state for record in records] == [JobState.PENDING] * 5 + [JobState.QUEUED]
    assert "does not support docker" in records[-1].state_message


def test_a_batchs_rows_go_in_with_one_insert_per_table_and_what_needs_them_sees_them(store: Store,
                                                                                    engine: Engine) -> None:
    node(store, "wasm")
    jobs = [wasm() for _ in range(4)] + [wasm(count=0), wasm(name="twice"), wasm(count=2, name="twice")]
    records, statements = executed(engine, lambda: store.submit_all(jobs, actor="ci"))
    inserts = [" ".join(text.split()[:3]) for text, _ in statements if text.startswith("INSERT")]
    # the empty job's end and the second "twice"'s lookup (it becomes the first's next version) insert what came
    # before them, the rest goes in at the end: six new jobs in two INSERTs, six jobs' executions in three
    assert inserts.count("INSERT INTO jobs") == 2 and inserts.count("INSERT INTO executions") == 3
    assert records[5].id == records[6].id and records[6].version == 2
    assert [store.find_job("default", r.id).state for r in records[:5]] == [JobState.PENDING] * 4 + [
        JobState.COMPLETED]
    assert len(store.executions(records[0].id)) == 1
    assert sorted((e.job_version, e.compute_state) for e in store.executions(records[5].id)) == [
        (1, ExecutionState.CANCELLED), (2, ExecutionState.NEW), (2, ExecutionState.NEW)]
    assert [entry.target for entry in AuditLog(engine).read()] == [r.id for r in records]


# -- claim ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_claim", [1, 3])
def test_claim_assigns_each_execution_once_under_a_race(tmp_path: Path, engine: Engine, per_claim: int) -> None:
    store = Store(engine, lease_seconds=60, max_attempts=3, queue_timeout=3600)
    job_ids = [store.submit(wasm(count=5)).id for _ in range(40)]
    expected = {e.id for job_id in job_ids for e in store.executions(job_id)}
    assert len(expected) == 200

    # eight claimers, each with its own node and its own connection pool, as separate replicas would be
    workers = 8
    engines = [make_engine(engine.url.render_as_string(hide_password=False)) for _ in range(workers)]
    stores = [Store(e, lease_seconds=60, max_attempts=3, queue_timeout=3600) for e in engines]
    nodes = [node(s, "wasm") for s in stores]
    claimed: list[list[str]] = [[] for _ in range(workers)]
    found_none = [False] * workers
    errors: list[BaseException] = []
    rounds = threading.Barrier(workers)

    def claimer(index: int) -> None:
        # in rounds that every claimer starts at once, so that each claim races the others' (a claimer left to
        # loop on its own would take everything while the others wait on the lock)
        try:
            while True:
                rounds.wait(10)
                got = stores[index].claim(nodes[index], per_claim)
                found_none[index] = not got
                assert len({item.execution.id for item in got}) == len(got), "one claim took an execution twice"
                for item in got:
                    assert item.execution.node_id == nodes[index].id
                    assert item.job.id == item.execution.job_id
                claimed[index].extend(item.execution.id for item in got)
                rounds.wait(10)
                if all(found_none):
                    return
        except BaseException as exc:  # reported below, with the thread's failure
            rounds.abort()
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for e in engines:
        e.dispose()
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    assert sum(1 for ids in claimed if ids) >= 2, "the claimers did not race: one took everything"
    every_claim = [execution_id for ids in claimed for execution_id in ids]
    assert len(every_claim) == len(set(every_claim)), "an execution was claimed twice"
    assert set(every_claim) == expected
    # what the database says agrees with what each claimer was told
    owner = {execution_id: nodes[index].id for index, ids in enumerate(claimed) for execution_id in ids}
    for job_id in job_ids:
        for execution in store.executions(job_id):
            assert execution.compute_state == ExecutionState.BID_ACCEPTED
            assert execution.node_id == owner[execution.id]
        assert job_state(store, job_id)[0] == JobState.RUNNING


def constrained(count: int) -> Any:
    """A wasm job only nodes labelled site=elsewhere may run (it waits: the store has a queue timeout)."""
    spec = wasm(count=count).wire() | {"Constraints": [{"Key": "site", "Operator": "=", "Values": ["elsewhere"]}]}
    job, _ = parse_job(spec)
    return job


@pytest.mark.parametrize("backlog", ["one job of 600", "300 jobs", "300 jobs of 50"])
def test_a_backlog_the_node_cannot_run_does_not_hide_newer_work(store: Store, backlog: str) -> None:
    """Older executions a node cannot take (a constraint it does not meet) are passed over job by job, however
    many there are ahead of the work it can take, and later claims leave them out: none of them keeps finding
    nothing (with more such jobs than a node once remembered, and many executions each, a claim's reading limit
    ran out before the new work while the jobs it had passed over were forgotten again)."""
    here = node(store)
    jobs, count = {"one job of 600": (1, 600), "300 jobs": (300, 1), "300 jobs of 50": (300, 50)}[backlog]
    store.submit_all([constrained(count) for _ in range(jobs)])
    for attempt in range(3):
        runnable = store.submit(wasm())
        got = store.claim(here, 1)
        assert [c.execution.job_id for c in got] == [runnable.id], attempt
        store.complete(here.id, got[0].execution.id, RunOutcome(exit_code=0), published=False)


def test_a_claim_crosses_jobs_it_passes_over_many_to_a_statement(store: Store, engine: Engine) -> None:
    """Once a node has passed over jobs it can never run, a claim crosses them HEADS to a query (each job one index
    seek in the statement), not one query each: with 300 such jobs ahead, a handful of statements, on every engine
    of the node, in queue order."""
    here = node(store, "docker", "wasm")
    store.submit_all([constrained(3) for _ in range(150)])
    for _ in range(150):
        store.submit(constrained(2))
    assert store.claim(here, 2) == []  # reads the constrained jobs once
    wanted = [store.submit(make()).id for make in (wasm, docker)]
    got, statements = executed(engine, lambda: store.claim(here, 2))
    assert [c.execution.job_id for c in got] == wanted
    assert len(statements) < 20, len(statements)
    assert store.claim(here, 1) == []
    if not ON_POSTGRES:  # every step of the recursive query is a seek of the claims index, never a scan
        with engine.connect() as connection:
            heads = next((s, p) for s, p in statements if s.startswith("WITH RECURSIVE heads"))
            steps = [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + heads[0], heads[1])
                     if " step " in row[3]]
        assert len(steps) == 3 and all(plan.startswith("SEARCH step USING COVERING INDEX ix_executions_waiting (")
                                       for plan in steps), steps


def test_a_completion_that_says_the_slots_fills_the_one_it_frees(store: Store) -> None:
    job = store.submit(wasm(count=4))
    here = node(store)
    first = store.claim(here, 2, slots=2)
    _, none = store.complete(here.id, first[0].execution.id, RunOutcome(exit_code=0), published=False)
    assert none == []  # without slots, the completion takes nothing (the agent's poll fills the slot)
    _, taken = store.complete(here.id, first[1].execution.id, RunOutcome(exit_code=0), published=False, slots=2)
    assert len(taken) == 2  # both slots are free again: the two remaining executions
    assert {c.execution.node_id for c in taken} == {here.id}
    assert {c.execution.compute_state for c in taken} == {ExecutionState.BID_ACCEPTED}
    assert store.claim(here, 2, slots=2) == []  # both taken by the completion: none over the node's slots
    _, more = store.complete(here.id, taken[0].execution.id, RunOutcome(exit_code=0), published=False, slots=2)
    assert more == []  # nothing waits any more
    states = by_id(store, job.id)
    assert states[taken[1].execution.id].compute_state == ExecutionState.BID_ACCEPTED


def test_a_poll_that_says_its_slots_takes_only_what_they_leave_free(store: Store) -> None:
    job = store.submit(wasm(count=5))
    here = node(store)
    first = store.claim(here, 2, slots=2)
    assert len(first) == 2
    assert store.claim(here, 2, slots=2) == []  # both slots taken by its running executions
    store.complete(here.id, first[0].execution.id, RunOutcome(exit_code=0), published=False)
    assert len(store.claim(here, 2, slots=2)) == 1  # the completion freed one
    assert {e.compute_state for e in store.executions(job.id)} >= {ExecutionState.NEW}


def test_a_submission_claims_for_waiting_polls_and_skips_a_node_gone_or_rejected_meanwhile(store: Store) -> None:
    polling, rejected, gone = node(store), node(store), node(store)
    store.set_membership(rejected.id, NodeMembership.REJECTED)
    store.delete_node(gone.id)
    [job], claims = store.submit_claiming(
        [wasm(count=3)], claim_for=[(rejected.id, 1, 1), (polling.id, 2, 2), (gone.id, 1, 1)])
    assert [[c.job.id for c in claimed] for claimed in claims] == [[], [job.id, job.id], []]
    assert sorted(e.node_id or "" for e in store.executions(job.id)) == ["", polling.id, polling.id]
    assert store.find_job("default", job.id).state == JobState.RUNNING


@pytest.mark.skipif(not ON_POSTGRES, reason="row locks held by another transaction: PostgreSQL's (SQLite has one "
                                             "writer at a time, so a claim never meets them)")
def test_a_claim_passes_over_what_another_claim_holds_and_takes_each_execution_once(store: Store,
                                                                                 engine: Engine) -> None:
    job = store.submit(wasm(count=4))
    first, second, *_ = sorted(store.executions(job.id), key=lambda e: e.partition_index)
    here = node(store)
    with engine.connect() as other:  # a claim on another replica that has locked the second execution
        other.execute(select(ExecutionRecord).where(col(ExecutionRecord.id) == second.id).with_for_update())
        got = [c.execution.id for c in store.claim(here, 3)]
    assert len(got) == len(set(got)) == 3
    assert second.id not in got and first.id in got


def test_a_claim_takes_its_executions_and_starts_their_jobs_with_one_statement_each(store: Store,
                                                                                   engine: Engine) -> None:
    jobs = store.submit_all([wasm() for _ in range(3)])
    here = node(store)
    claimed, statements = executed(engine, lambda: store.claim(here, 3))
    assert sorted(c.job.id for c in claimed) == sorted(job.id for job in jobs)
    assert {c.job.state for c in claimed} == {JobState.RUNNING}
    assert {store.find_job("default", job.id).state for job in jobs} == {JobState.RUNNING}
    # the node's row, its executions' resources, the waiting executions and their jobs are read; nothing is read again
    # to lock it (on PostgreSQL, what is taken and started is locked by the UPDATE that takes or starts it)
    assert [" ".join(s.split()[:3]) for s, _ in statements if s.startswith(("UPDATE", "INSERT"))] == [
        "UPDATE executions SET", "UPDATE jobs SET", "INSERT INTO events"]
    assert sum(s.startswith("SELECT") for s, _ in statements) == 4
    assert [(e.previous_state, e.new_state) for e in store.history(jobs[0].id)] == [
        ("", "Pending"), ("Pending", "Queued"), ("New", "BidAccepted"), ("Queued", "Running")]


def executed(engine: Engine, action: Callable[[], Any]) -> tuple[Any, list[tuple[str, Any]]]:
    """What `action` returns, and the statements it ran, each with its parameters."""
    statements: list[tuple[str, Any]] = []

    def listener(_connection: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        return action(), statements
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_a_transactions_events_go_in_with_one_insert_in_the_order_of_the_changes(store: Store,
                                                                                 engine: Engine) -> None:
    def event_inserts(action: Callable[[], Any]) -> tuple[Any, int]:
        result, statements = executed(engine, action)
        return result, sum(statement.startswith("INSERT INTO events") for statement, _ in statements)

    here = node(store)
    jobs, inserts = event_inserts(lambda: store.submit_all([wasm() for _ in range(5)]))
    assert inserts == 1  # five jobs' submission and queueing events
    [claimed] = store.claim(here, 1, slots=1)
    (_, taken), inserts = event_inserts(lambda: store.complete(
        here.id, claimed.execution.id, RunOutcome(exit_code=0, started=time.time_ns()), published=False, slots=1))
    assert inserts == 1  # Running, Completed, the job's end, the next execution's claim and its job's start
    assert [c.execution.job_id for c in (claimed, *taken)] == [jobs[0].id, jobs[1].id]  # a batch's order
    first = [(e.execution_id, e.new_state) for e in store.history(jobs[0].id)]
    assert first == [("", "Pending"), (claimed.execution.id, "BidAccepted"), ("", "Running"),
                     (claimed.execution.id, "Running"), (claimed.execution.id, "Completed"), ("", "Completed")]
    assert [e.new_state for e in store.history(jobs[1].id)] == ["Pending", "BidAccepted", "Running"]


def jobs_read(engine: Engine, action: Callable[[], Any]) -> tuple[Any, int]:
    """What `action` returns, and how many jobs (whole rows, with their specs) its statements read by ID."""
    result, statements = executed(engine, action)
    return result, sum(len(parameters) for statement, parameters in statements
                       if statement.startswith("SELECT jobs.id, jobs.namespace") and "WHERE jobs.id IN" in statement)


def test_job_versions_a_node_can_never_run_are_passed_over_once(store: Store, engine: Engine) -> None:
    """A node reads the jobs whose constraints it does not meet the first time it passes over them; later claims
    pass over them without reading them. A new version of such a job, which the node may run, is not passed over."""
    here = node(store)
    for _ in range(20):
        store.submit(constrained(1))
    named = wasm(name="moves").wire() | {"Constraints": [{"Key": "site", "Operator": "=", "Values": ["elsewhere"]}]}
    store.submit(parse_job(named)[0])
    store.submit(wasm())
    first, read_first = jobs_read(engine, lambda: store.claim(here, 1))
    store.submit(wasm())
    second, read_second = jobs_read(engine, lambda: store.claim(here, 1))
    assert len(first) == len(second) == 1
    assert (read_first, read_second) == (22, 1)  # the 21 it can never run and the one it takes; then that one
    moved = store.submit(parse_job(wasm(name="moves").wire())[0])  # version 2: no constraint
    assert moved.version == 2
    assert [c.execution.job_id for c in store.claim(here, 1)] == [moved.id]


def test_a_busy_node_stops_looking_through_a_backlog_it_has_no_room_for(store: Store, engine: Engine) -> None:
    """A node whose resources are taken passes over a few jobs that do not fit now and stops: it does not read
    the whole backlog (a query per job) on every poll."""
    here, _ = store.register_node(NodeInfo(engines=["wasm"], publishers=["s3managed"], storage_sources=STORAGE_SOURCES,
                                           capacity={"CPU": 1}))
    for _ in range(300):
        spec = wasm().wire()
        spec["Tasks"][0]["Resources"] = {"CPU": "1"}
        store.submit(parse_job(spec)[0])
    assert len(store.claim(here, 1)) == 1  # the node's one CPU is taken now
    got, statements = executed(engine, lambda: store.claim(here, 1))
    assert got == []
    assert len(statements) < 40, len(statements)


def test_a_full_node_passes_over_what_does_not_fit_now_without_reading_it_and_still_backfills(
        store: Store, engine: Engine) -> None:
    """What an execution asks for is on its row: a claim passes over the jobs that need more than the node has
    free without reading their specs (4 slots of 500m on 1.6 CPUs: each claim for the fourth passed over 8), and
    still takes a smaller job behind them."""
    here, _ = store.register_node(NodeInfo(engines=["wasm"], publishers=["s3managed"], storage_sources=STORAGE_SOURCES,
                                           capacity={"CPU": 1.6}))

    def asking(cpu: str) -> Any:
        spec = wasm().wire()
        spec["Tasks"][0]["Resources"] = {"CPU": cpu}
        return store.submit(parse_job(spec)[0])

    for _ in range(10):
        asking("500m")
    assert len(store.claim(here, 3)) == 3  # 0.1 CPU left; 7 wait (within MAX_BUSY of the small job behind them)
    got, read = jobs_read(engine, lambda: store.claim(here, 1))
    assert (got, read) == ([], 0)
    small = asking("100m")
    got, read = jobs_read(engine, lambda: store.claim(here, 1))
    assert [c.execution.job_id for c in got] == [small.id]
    assert read == 1  # only the one it took


def complete_together(store: Store, node_id: str, execution_id: str, start: threading.Barrier) -> None:
    start.wait(10)
    store.complete(node_id, execution_id, RunOutcome(exit_code=0), published=False)


def test_a_job_whose_partitions_complete_at_once_ends_completed(engine: Engine) -> None:
    """Completions of one job's partitions arriving together, from several replicas: each counts the others', so
    the job always ends Completed (on PostgreSQL they take turns on the job's row; SQLite has one writer)."""
    workers = 6
    engines = [make_engine(engine.url.render_as_string(hide_password=False)) for _ in range(workers)]
    stores = [Store(e, lease_seconds=60, max_attempts=3, queue_timeout=3600) for e in engines]
    try:
        for _ in range(5):
            job = stores[0].submit(wasm(count=workers))
            here = node(stores[0])
            claimed = [c.execution.id for c in stores[0].claim(here, workers)]
            start = threading.Barrier(workers)
            threads = [threading.Thread(target=complete_together, args=(stores[i], here.id, claimed[i], start))
                       for i in range(workers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert job_state(stores[0], job.id)[0] == JobState.COMPLETED
    finally:
        for e in engines:
            e.dispose()


@contextmanager
def meanwhile(engine: Engine, statement: str, action: Callable[[], Any]) -> Iterator[list[BaseException]]:
    """The first time `engine` is about to run a statement that starts with `statement`, `action` runs in another
    thread (on other connections) until it ends or waits for a row lock (PostgreSQL). Yields what `action`
    raised, complete once the block has ended."""
    raised: list[BaseException] = []
    threads: list[threading.Thread] = []

    def attempt() -> None:
        try:
            action()
        except BaseException as exc:  # for the test to look at
            raised.append(exc)

    def waits_on_a_lock() -> bool:
        with engine.connect() as watcher:
            return bool(watcher.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                                                "'Lock' AND datname = current_database()").scalar())

    def listener(_connection: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if threads or not sql.startswith(statement):
            return
        threads.append(threading.Thread(target=attempt))
        threads[0].start()
        wait_for(lambda: not threads[0].is_alive() or waits_on_a_lock(), timeout=20, what="the other transaction")

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield raised
    finally:
        event.remove(engine, "before_cursor_execute", listener)
        for thread in threads:
            thread.join(30)
    assert threads and not threads[0].is_alive()


@pytest.fixture
def other_store(engine: Engine) -> Iterator[Store]:
    """A second store on its own connections: another replica."""
    other = make_engine(engine.url.render_as_string(hide_password=False))
    yield Store(other, lease_seconds=60, max_attempts=3, queue_timeout=3600)
    other.dispose()


def completion(store: Store, node_id: str, execution_id: str) -> Callable[[], Any]:
    return lambda: store.complete(node_id, execution_id, RunOutcome(exit_code=0), published=False)


@pytest.mark.skipif(not ON_POSTGRES, reason="row locks held by another transaction: PostgreSQL's")
def test_a_node_found_silent_as_it_completes_an_execution_never_undoes_the_completion(
        store: Store, other_store: Store, engine: Engine) -> None:
    """One replica fails a silent node's executions while its agent completes one through another: either the
    completion goes first and stands, or the failure does and the completion is refused. Never a job Completed
    whose execution reads Failed."""
    job = store.submit(wasm())
    here = node(store)
    [claimed] = store.claim(here, 1)
    with meanwhile(engine, "UPDATE executions", completion(other_store, here.id, claimed.execution.id)) as raised:
        store.disconnect_silent_nodes(0)
    ended = by_id(store, job.id)[claimed.execution.id].compute_state
    assert (job_state(store, job.id)[0] == JobState.COMPLETED) == (ended == ExecutionState.COMPLETED)
    assert ended == (ExecutionState.FAILED if raised else ExecutionState.COMPLETED)
    assert all(isinstance(exc, Conflict) for exc in raised)


@pytest.mark.skipif(not ON_POSTGRES, reason="row locks held by another transaction: PostgreSQL's")
def test_a_job_stopped_as_it_completes_ends_once(store: Store, other_store: Store, engine: Engine) -> None:
    """A stop through one replica while the job's execution completes through another: the job ends once,
    Stopped or Completed (a stop read the job as Running and then overwrote its completion)."""
    job = store.submit(wasm())
    here = node(store)
    [claimed] = store.claim(here, 1)
    with meanwhile(engine, "UPDATE jobs", completion(other_store, here.id, claimed.execution.id)) as raised:
        store.stop_job("default", job.id)
    assert not raised
    with Session(engine) as session:
        ends = [e.new_state for e in history.read(session, job.id, after=0, limit=100, level="job")
                if JobState(e.new_state).terminal]
    assert ends == [job_state(store, job.id)[0]]


def test_claim_respects_the_limit_and_engines(store: Store) -> None:
    wasm_job = store.submit(wasm(count=2))
    docker_job = store.submit(docker(count=2))
    docker_only = node(store, "docker")
    wasm_only = node(store, "wasm")
    no_engines, _ = store.register_node(NodeInfo(engines=[]))

    assert store.claim(no_engines, 10) == []
    assert store.claim(wasm_only, 0) == []
    first = store.claim(docker_only, 1)
    assert [c.execution.job_id for c in first] == [docker_job.id]
    rest = store.claim(docker_only, 10)
    assert [c.execution.job_id for c in rest] == [docker_job.id]
    assert store.claim(docker_only, 10) == []  # the wasm work is still there, but not for this node
    assert {e.compute_state for e in store.executions(wasm_job.id)} == {ExecutionState.NEW}
    got = store.claim(wasm_only, 10)
    assert sorted(c.execution.partition_index for c in got) == [0, 1]
    assert {c.execution.job_id for c in got} == {wasm_job.id}


def test_failed_partition_is_retried_elsewhere_never_on_the_same_node(store: Store) -> None:
    job = store.submit(wasm(count=2))
    a, b = node(store), node(store)
    [first, second] = store.claim(a, 2)
    assert store.fail(a.id, first.execution.id, "image pull failed") is True

    assert store.claim(a, 10) == []  # A already failed that partition
    [retry] = store.claim(b, 10)
    assert retry.execution.id != first.execution.id
    assert retry.execution.partition_index == first.execution.partition_index
    assert retry.execution.attempt == 2
    assert retry.execution.node_id == b.id

    executions = by_id(store, job.id)
    assert executions[first.execution.id].compute_state == ExecutionState.FAILED
    assert executions[first.execution.id].state_message == "image pull failed"
    assert executions[second.execution.id].compute_state == ExecutionState.BID_ACCEPTED
    assert job_state(store, job.id)[0] == JobState.RUNNING


def test_exhausted_attempts_fail_the_job(engine: Engine) -> None:
    store = Store(engine, lease_seconds=60, max_attempts=2, queue_timeout=3600)
    job = store.submit(wasm(count=2))
    a, b, c = node(store), node(store), node(store)
    [one, other] = store.claim(a, 2)
    assert store.fail(a.id, one.execution.id, "out of memory") is True
    [retry] = store.claim(b, 1)
    assert retry.execution.attempt == 2
    assert store.fail(b.id, retry.execution.id, "out of memory again") is False

    state, message = job_state(store, job.id)
    assert state == JobState.FAILED
    assert "retried too many times" in message
    assert "out of memory again" in message
    assert store.claim(c, 10) == []  # nothing was rescheduled
    assert len(store.executions(job.id)) == 3
    # the partition still running is told to stop
    assert store.stopped_among(a.id, [other.execution.id]) == [other.execution.id]


def test_max_attempts_one_fails_at_the_first_failure(engine: Engine) -> None:
    store = Store(engine, lease_seconds=60, max_attempts=1, queue_timeout=3600)
    job = store.submit(wasm())
    a = node(store)
    [claimed] = store.claim(a, 1)
    assert store.fail(a.id, claimed.execution.id, "boom") is False
    state, message = job_state(store, job.id)
    assert state == JobState.FAILED
    assert "retried too many times" in message
    assert len(store.executions(job.id)) == 1


# -- leases -----------------------------------------------------------------------------------------------


def _wait_until_past(deadline_ns: int | None) -> None:
    assert deadline_ns is not None
    wait_for(lambda: time.time_ns() > deadline_ns, timeout=10, what="the lease to expire")


def test_expired_lease_fails_and_reschedules(engine: Engine) -> None:
    store = Store(engine, lease_seconds=0.2, max_attempts=3, queue_timeout=3600)
    job = store.submit(wasm())
    a = node(store)
    [claimed] = store.claim(a, 1)
    assert claimed.execution.lease_expires is not None
    assert store.expire_leases() == 0  # not yet (the lease is 0.2 s; a sweep right after the claim finds nothing)

    _wait_until_past(claimed.execution.lease_expires)
    assert store.expire_leases() == 1
    assert store.expire_leases() == 0  # once only

    [failed, retry] = store.executions(job.id)
    assert failed.id == claimed.execution.id
    assert failed.compute_state == ExecutionState.FAILED
    assert "lease expired" in failed.state_message
    assert failed.lease_expires is None
    assert (retry.compute_state, retry.attempt, retry.partition_index, retry.node_id) == (ExecutionState.NEW, 2, 0,
                                                                                           None)
    # the node that lost it is late: it may no longer touch the execution
    with pytest.raises(Conflict):
        store.complete(a.id, failed.id, RunOutcome(exit_code=0), published=False)


def test_sweeps_on_several_replicas_at_once_act_once(engine: Engine) -> None:
    """Housekeeping runs on every replica: sweeping the same expired leases from four at once fails each
    execution once and schedules one retry for it."""
    store = Store(engine, lease_seconds=0.2, max_attempts=3, queue_timeout=3600)
    jobs = [store.submit(wasm(count=5)).id for _ in range(8)]
    claimed = store.claim(node(store), 40)
    assert len(claimed) == 40
    _wait_until_past(max(c.execution.lease_expires or 0 for c in claimed))
    url = engine.url.render_as_string(hide_password=False)
    engines = [make_engine(url) for _ in range(4)]
    replicas = [Store(e, lease_seconds=0.2, max_attempts=3, queue_timeout=3600) for e in engines]
    start = threading.Barrier(len(replicas))
    swept: list[int] = []

    def sweep(replica: Store) -> None:
        start.wait(10)
        swept.append(replica.expire_leases())

    threads = [threading.Thread(target=sweep, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for e in engines:
        e.dispose()
    assert sum(swept) == 40, swept
    for job_id in jobs:
        states = sorted(e.compute_state for e in store.executions(job_id))
        assert states == sorted([ExecutionState.FAILED] * 5 + [ExecutionState.NEW] * 5), (job_id, states)


def test_heartbeat_renews_the_leases_of_running_executions(engine: Engine) -> None:
    short = Store(engine, lease_seconds=0.2, max_attempts=3, queue_timeout=3600)
    long = Store(engine, lease_seconds=600, max_attempts=3, queue_timeout=3600)
    job = short.submit(wasm(count=3))
    a, b = node(short), node(short)
    claims = short.claim(a, 3)
    kept, dropped, stolen = (c.execution for c in claims)
    _wait_until_past(max(e.lease_expires or 0 for e in (kept, dropped, stolen)))

    # A says it still runs `kept`; B names `stolen`, which is not its own, so that lease is not renewed
    long.heartbeat(a.id, None, [kept.id])
    long.heartbeat(b.id, None, [stolen.id])
    assert long.expire_leases() == 2

    executions = by_id(long, job.id)
    assert executions[kept.id].compute_state == ExecutionState.BID_ACCEPTED
    assert (executions[kept.id].lease_expires or 0) > time.time_ns() + 500 * 10**9
    assert executions[dropped.id].compute_state == ExecutionState.FAILED
    assert executions[stolen.id].compute_state == ExecutionState.FAILED
    assert long.expire_leases() == 0


def test_heartbeat_marks_the_node_connected_and_updates_its_info(store: Store) -> None:
    a = node(store)
    before = a.last_heartbeat
    wait_for(lambda: time.time_ns() > before, timeout=5)
    updated = store.heartbeat(a.id, NodeInfo(name="renamed", engines=["docker", "wasm"], labels={"zone": "a"},
                                            storage_sources=STORAGE_SOURCES), [])
    assert updated.last_heartbeat > before
    [stored] = store.nodes()
    assert (stored.name, stored.engines, stored.labels) == ("renamed", ["docker", "wasm"], {"zone": "a"})
    with pytest.raises(Unauthorized):
        store.heartbeat("n-nobody", None, [])


def test_an_idle_poll_with_a_recent_heartbeat_only_reads(engine: Engine) -> None:
    """Such a poll takes no write lock (it answers while another transaction holds it) and leaves the heartbeat as
    it is; one that has something to write (a stale heartbeat, new info or free slots, work waiting) writes."""
    store = Store(engine, lease_seconds=60, max_attempts=3, queue_timeout=3600, heartbeat_seconds=60)
    a = node(store)
    info = NodeInfo(engines=["wasm"], publishers=["s3managed"], storage_sources=STORAGE_SOURCES)
    holding, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with store._tx() as session:  # a writer that takes its time, holding the node's row (PostgreSQL) too
            session.connection().execute(sql.NODE, {"node": a.id})
            holding.set()
            release.wait(30)

    writer = threading.Thread(target=hold_the_write_lock)
    writer.start()
    try:
        assert holding.wait(10)
        answered: list[Any] = []
        poller = threading.Thread(target=lambda: answered.append(store.poll(a.id, [], limit=1, info=info)))
        poller.start()
        poller.join(10)
        assert answered, "an idle poll waited for another transaction's write lock"
    finally:
        release.set()
        writer.join()
    [stored] = store.nodes()
    assert answered[0][0].last_heartbeat == stored.last_heartbeat == a.last_heartbeat

    store.poll(a.id, [], limit=1, info=dataclasses.replace(info, labels={"zone": "b"}))
    [stored] = store.nodes()
    assert stored.labels == {"zone": "b"} and stored.last_heartbeat > a.last_heartbeat
    store.poll(a.id, [], limit=1, free_slots=2)
    assert store.nodes()[0].free_slots == 2
    job = store.submit(wasm())
    [claimed] = store.poll(a.id, [], limit=1, free_slots=2)[2]
    assert claimed.job.id == job.id

    stale = Store(engine, lease_seconds=60, max_attempts=3, heartbeat_seconds=0.05)
    before = store.nodes()[0].last_heartbeat
    wait_for(lambda: time.time_ns() > before + 10**8, timeout=5, what="the heartbeat to age")
    stale.poll(a.id, [claimed.execution.id], limit=0, free_slots=2)  # it runs something: written
    after = store.nodes()[0].last_heartbeat
    assert after > before
    wait_for(lambda: time.time_ns() > after + 10**8, timeout=5, what="the heartbeat to age")
    stale.poll(a.id, [], limit=0, free_slots=2)
    assert store.nodes()[0].last_heartbeat > after


def test_silent_nodes_are_disconnected(store: Store) -> None:
    silent, talking = node(store), node(store)
    job = store.submit(wasm())
    [claimed] = store.claim(silent, 1)
    silence = 1.0
    wait_for(lambda: time.time_ns() > silent.last_heartbeat + int(silence * 1e9), timeout=10,
             what="the node to be silent")
    store.heartbeat(talking.id, None, [])
    assert store.disconnect_silent_nodes(silence) == 1  # its execution, rescheduled
    assert store.disconnect_silent_nodes(silence) == 0  # already disconnected
    lost, retry = store.executions(job.id)
    assert lost.id == claimed.execution.id and lost.compute_state == "Failed"
    assert f"node {silent.id} disconnected" in lost.state_message
    assert (retry.compute_state, retry.attempt, retry.partition_index) == ("New", 2, 0)
    connection = {n.id: n.connection for n in store.nodes()}
    assert connection == {silent.id: NodeConnection.DISCONNECTED, talking.id: NodeConnection.CONNECTED}
    store.heartbeat(silent.id, None, [])
    assert {n.connection for n in store.nodes()} == {NodeConnection.CONNECTED}


# -- complete and the rules for updates -----------------------------------------------------------------


def test_completing_every_partition_completes_the_job(store: Store) -> None:
    job = store.submit(wasm(count=3))
    a = node(store)
    claims = store.claim(a, 3)
    codes = [0, 3, 0]
    for claimed, code in zip(claims[:2], codes[:2], strict=True):
        store.complete(a.id, claimed.execution.id, RunOutcome(exit_code=code, stdout="x" * 5000, stderr="e"),
                       published=False)
        assert job_state(store, job.id)[0] == JobState.RUNNING  # a partition is still running
    store.complete(a.id, claims[2].execution.id, RunOutcome(exit_code=codes[2]), published=False)

    state, message = job_state(store, job.id)
    assert (state, message) == (JobState.COMPLETED, "")
    executions = store.executions(job.id)
    assert [e.compute_state for e in executions] == [ExecutionState.COMPLETED] * 3
    exit_codes = {e.id: e.exit_code for e in executions}
    assert [exit_codes[c.execution.id] for c in claims] == codes
    first = by_id(store, job.id)[claims[0].execution.id]
    assert (len(first.stdout), first.stdout_truncated, first.stderr) == (2048, True, "e")
    assert {e.lease_expires for e in executions} == {None}


def test_a_job_of_one_partition_ends_with_its_completion_without_counting_its_partitions(store: Store,
                                                                                         engine: Engine) -> None:
    one, two = store.submit(wasm()), store.submit(wasm(count=2))
    a = node(store)
    assert len(store.claim(a, 3)) == 3
    [only], [first, second] = store.executions(one.id), store.executions(two.id)

    def counts_partitions(execution_id: str) -> int:
        _, statements = executed(engine, lambda: store.complete(a.id, execution_id, RunOutcome(exit_code=0),
                                                                published=False))
        return sum("count(distinct" in statement.lower() for statement, _ in statements)

    assert counts_partitions(only.id) == 0
    assert job_state(store, one.id)[0] == JobState.COMPLETED
    assert counts_partitions(first.id) == 1
    assert job_state(store, two.id)[0] == JobState.RUNNING
    assert counts_partitions(second.id) == 1
    assert job_state(store, two.id)[0] == JobState.COMPLETED


def test_non_zero_exit_code_is_still_completed(store: Store) -> None:
    job = store.submit(wasm())
    a = node(store)
    [claimed] = store.claim(a, 1)
    store.complete(a.id, claimed.execution.id, RunOutcome(exit_code=42), published=False)
    assert job_state(store, job.id)[0] == JobState.COMPLETED
    [execution] = store.executions(job.id)
    assert (execution.compute_state, execution.exit_code) == (ExecutionState.COMPLETED, 42)


def test_updates_from_a_node_not_assigned_are_not_found(store: Store) -> None:
    job = store.submit(wasm())
    a, b = node(store), node(store)
    [claimed] = store.claim(a, 1)
    execution_id = claimed.execution.id
    with pytest.raises(NotFound):
        store.complete(b.id, execution_id, RunOutcome(exit_code=0), published=False)
    with pytest.raises(NotFound):
        store.fail(b.id, execution_id, "not mine")
    with pytest.raises(NotFound):
        store.update_status(b.id, execution_id, ExecutionState.RUNNING)
    with pytest.raises(NotFound):
        store.complete(a.id, "e-no-such-execution", RunOutcome(exit_code=0), published=False)
    [execution] = store.executions(job.id)
    assert (execution.compute_state, execution.node_id) == (ExecutionState.BID_ACCEPTED, a.id)
    store.update_status(a.id, execution_id, ExecutionState.RUNNING, "started")
    [execution] = store.executions(job.id)
    assert (execution.compute_state, execution.state_message) == (ExecutionState.RUNNING, "started")


def test_completing_a_failed_execution_is_a_conflict(store: Store) -> None:
    job = store.submit(wasm())
    a = node(store)
    [claimed] = store.claim(a, 1)
    store.fail(a.id, claimed.execution.id, "disk full")
    with pytest.raises(Conflict):
        store.complete(a.id, claimed.execution.id, RunOutcome(exit_code=0), published=False)
    with pytest.raises(Conflict):
        store.fail(a.id, claimed.execution.id, "again")
    assert by_id(store, job.id)[claimed.execution.id].compute_state == ExecutionState.FAILED
    assert job_state(store, job.id)[0] == JobState.RUNNING  # the retry is waiting


def test_stopped_among_names_executions_no_longer_active(store: Store) -> None:
    store.submit(wasm(count=3))
    a, b = node(store), node(store)
    running, done, failed = (c.execution.id for c in store.claim(a, 3))
    store.complete(a.id, done, RunOutcome(exit_code=0), published=False)
    store.fail(a.id, failed, "lost")

    assert store.stopped_among(a.id, []) == []
    assert store.stopped_among(a.id, [running]) == []
    # one it completed itself it has let go already: naming it would only end the agent's poll early
    assert store.stopped_among(a.id, [running, done, failed, "e-unknown"]) == sorted([failed, "e-unknown"])
    assert store.stopped_among(b.id, [running]) == [running]  # not B's


# -- finding and listing jobs -----------------------------------------------------------------------------


def test_find_job_by_id_prefix_and_name(store: Store) -> None:
    named = store.submit(wasm(name="nightly"))
    other = store.submit(wasm())
    assert store.find_job("default", named.id).id == named.id
    assert store.find_job("default", named.id[:10]).id == named.id
    assert store.find_job("default", "nightly").id == named.id
    assert store.find_job("default", other.id).id == other.id
    with pytest.raises(BadRequest, match="ambiguous"):
        store.find_job("default", "j-")
    with pytest.raises(NotFound):
        store.find_job("default", "j-ffffffff-0000-no-such")
    with pytest.raises(NotFound):
        store.find_job("other", named.id)  # another namespace
    with pytest.raises(NotFound):
        store.find_job("default", "j_")  # `_` is not a LIKE wildcard here


def test_list_jobs_pages_newest_first(store: Store) -> None:
    ids = [store.submit(wasm()).id for _ in range(5)]
    store.submit(wasm(namespace="elsewhere"))

    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page, offset = store.list_jobs(["default"], limit=2, offset=offset)
        seen += [job.id for job in page]
        assert len(page) == 2 or offset is None
    assert seen == ids[::-1]
    oldest_first, more = store.list_jobs(["default"], limit=10, offset=0, reverse=True)
    assert ([job.id for job in oldest_first], more) == (ids, None)
    by_id_order, _ = store.list_jobs(["default"], limit=10, offset=0, order_by="id", reverse=True)
    assert [job.id for job in by_id_order] == sorted(ids)
    everywhere, _ = store.list_jobs(None, limit=10, offset=0)
    assert len(everywhere) == 6


def test_list_jobs_filters_by_state(store: Store) -> None:
    pending = store.submit(wasm())
    completed = store.submit(wasm(count=0))
    assert [j.id for j in store.list_jobs(["default"], limit=10, offset=0, state="completed")[0]] == [completed.id]
    assert [j.id for j in store.list_jobs(["default"], limit=10, offset=0, state="Queued")[0]] == [pending.id]
    assert store.list_jobs(["default"], limit=10, offset=0, state="Failed")[0] == []
    assert store.list_jobs(["default"], limit=10, offset=0, state="no such state")[0] == []


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite's query plan")
def test_jobs_listed_by_state_are_sought_in_the_index_on_states(store: Store, engine: Engine) -> None:
    """Not every job of the namespace read and its state compared (a client asking every 50 ms whether any of
    1,000 jobs still ran cost the gateway about 1 ms a question)."""
    store.submit(wasm(count=0))
    queued = store.submit(wasm())
    got, statements = executed(engine, lambda: store.list_jobs(["default"], limit=1, offset=0, state="QUEUED"))
    assert [job.id for job in got[0]] == [queued.id]
    with engine.connect() as connection:
        [(statement, parameters)] = [s for s in statements if "FROM jobs" in s[0]]
        plans = [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
    assert plans[0].startswith("SEARCH jobs USING INDEX ix_jobs_state (namespace=? AND state=?)"), plans


def test_list_jobs_filters_by_labels(store: Store) -> None:
    def labelled(**labels: str) -> str:
        job, _ = parse_job({"Type": "batch", "Labels": labels, "Tasks": [{"Name": "main", "Engine": {
            "Type": "docker", "Params": {"Image": "x"}}}]})
        return store.submit(job).id

    a, b, c = labelled(team="a", env="dev"), labelled(team="b", env="dev"), labelled(team="a", env="prod")
    for _ in range(60):  # unlabelled jobs between them: the filter must look past a whole batch
        labelled()
    team_a = parse_selector("team=a")
    assert [j.id for j in store.list_jobs(["default"], limit=10, offset=0, labels=team_a)[0]] == [c, a]
    page, following = store.list_jobs(["default"], limit=1, offset=0, labels=team_a)
    assert [j.id for j in page] == [c] and following is not None
    assert [j.id for j in store.list_jobs(["default"], limit=1, offset=following, labels=team_a)[0]] == [a]
    dev_not_b = parse_selector("env in (dev,qa),team!=b")
    assert [j.id for j in store.list_jobs(["default"], limit=10, offset=0, labels=dev_not_b)[0]] == [a]
    assert [j.id for j in store.list_jobs(["default"], limit=10, offset=0, labels=parse_selector("!team"))[0]] != []
    assert b not in [j.id for j in store.list_jobs(["default"], limit=100, offset=0, labels=team_a)[0]]


def test_a_completion_that_carries_the_start_time_records_running_at_that_time(store: Store) -> None:
    """Agents report short tasks Running with their completion: the history still shows each state, in order,
    with Running at the task's start."""
    store.submit(wasm())
    here = node(store)
    [claimed] = store.claim(here, 1)
    execution = claimed.execution
    started = execution.modify_time + 1  # just after the claim (and before the completion)
    store.complete(here.id, execution.id, RunOutcome(exit_code=0, started=started), published=False)
    events = [e for e in store.history(execution.job_id) if e.execution_id == execution.id and e.new_state]
    assert [(e.previous_state, e.new_state) for e in events] == [
        (ExecutionState.NEW, ExecutionState.BID_ACCEPTED), (ExecutionState.BID_ACCEPTED, ExecutionState.RUNNING),
        (ExecutionState.RUNNING, ExecutionState.COMPLETED)]
    assert events[1].time == started


def test_a_node_remembered_by_one_gateway_and_rejected_or_deleted_by_another_polls_no_more(engine: Engine) -> None:
    """A gateway remembers the nodes that call it, so their calls need not read them again; what a remembered
    node may do is checked in its poll's own transaction, so a change made by another replica counts at once."""
    here, there = (Store(engine, lease_seconds=60, max_attempts=3) for _ in range(2))
    rejected, rejected_credential = here.register_node(NodeInfo(engines=["wasm"]))
    deleted, deleted_credential = here.register_node(NodeInfo(engines=["wasm"]))
    for node_id, credential in ((rejected.id, rejected_credential), (deleted.id, deleted_credential)):
        assert here.authenticate_node(credential).id == node_id
        here.poll(node_id, [], limit=1)
    there.set_membership(rejected.id, NodeMembership.REJECTED)
    there.delete_node(deleted.id)
    assert here.remembered_node(rejected_credential) is not None  # what the other replica did is not known here
    with pytest.raises(Forbidden, match="rejected"):
        here.poll(rejected.id, [], limit=1)
    with pytest.raises(Unauthorized, match="unknown node"):
        here.poll(deleted.id, [], limit=1)


def test_a_node_of_several_engines_takes_their_executions_in_queue_order(store: Store) -> None:
    """Each engine's waiting executions are read in the order of the claim's index and merged."""
    here = node(store, "docker", "wasm")
    jobs = [store.submit(make()).id for make in (docker, wasm, docker, wasm, wasm)]
    assert [c.execution.job_id for c in store.claim(here, 2)] == jobs[:2]
    assert [store.claim(here, 1)[0].execution.job_id for _ in range(3)] == jobs[2:]


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite's query plan")
def test_a_claim_reads_only_its_engines_executions_through_the_claims_index(store: Store, engine: Engine) -> None:
    """Executions of other engines waiting ahead are never read: the claim's query seeks its engine's in the index
    (with 100,000 Docker executions ahead, a WASM node's claim took 19 ms instead of 1)."""
    store.submit(docker(count=50))
    wanted = store.submit(wasm())
    here = node(store, "wasm")
    got, statements = executed(engine, lambda: store.claim(here, 1))
    assert [c.execution.job_id for c in got] == [wanted.id]
    with engine.connect() as connection:
        plans = [row[3] for statement, parameters in statements
                 if "FROM executions" in statement and "ORDER BY executions.create_time" in statement
                 for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
    assert plans and plans[0].startswith("SEARCH executions USING INDEX ix_executions_waiting (compute_state=? AND "
                                         "engine=?)"), plans


def test_a_batch_of_completions_sees_what_the_ones_before_it_did(engine: Engine) -> None:
    """The first replica's exit fails the service (no attempts left), which stops the second while it still runs;
    the second's completion in the same batch then completes it, and nothing written before it undoes that."""
    store = Store(engine, lease_seconds=60, max_attempts=1, queue_timeout=3600)
    here = node(store)
    service, _ = parse_job({"Type": "service", "Count": 2, "Tasks": [{
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/m.wasm"}},
        "InputSources": [{"Target": "/app/m.wasm", "Source": {"Type": "inline", "Params": {"URL": WASM_DATA}}}]}]})
    job = store.submit(service)
    claimed = sorted((c.execution.id, c.execution.revision) for c in store.claim(here, 2))
    (first, _), (second, revision) = claimed
    results, _ = store.complete_all(here.id, [Completion(first, RunOutcome(exit_code=1)),
                                              Completion(second, RunOutcome(exit_code=0))])
    assert results == [0, 0]
    assert store.find_job("default", job.id).state == JobState.FAILED
    with Session(engine) as session:
        ended = session.get(ExecutionRecord, second)
        assert ended is not None
        assert (ended.compute_state, ended.desired_state) == (ExecutionState.COMPLETED, DesiredState.STOPPED)
        assert ended.state_message == "Completed successfully" and ended.exit_code == 0
        # two revisions more: the stop, then the completion (not the stop written again over it)
        assert ended.revision == revision + 2
