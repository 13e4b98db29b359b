"""Wake-ups of waiting polls: new work wakes as many polls of its engine as it has executions, longest waiting
first, and a poll that finds nothing passes its turn on; news for a node wakes that node's poll alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from gateway.notify import Waiter, WorkSignal


@pytest.fixture
def signal() -> Iterator[WorkSignal]:
    yield WorkSignal("test")


def wait_all(signal: WorkSignal, stack: ExitStack, *specs: tuple[str, list[str]]) -> list[Waiter]:
    waiters = [stack.enter_context(signal.waiting(node, engines)) for node, engines in specs]
    for waiter in waiters:
        waiter.arm()
    return waiters


def woken(waiters: list[Waiter]) -> list[str]:
    return [w.node_id for w in waiters if w.woken]


def test_new_work_wakes_that_many_polls_of_its_engine_longest_waiting_first(signal: WorkSignal) -> None:
    with ExitStack() as stack:
        waiters = wait_all(signal, stack, ("a", ["wasm"]), ("b", ["docker"]), ("c", ["wasm", "docker"]),
                           ("d", ["wasm"]))
        signal.notify(engines=["wasm"], count=2)
        assert woken(waiters) == ["a", "c"]
        signal.notify(engines=["docker"], count=1)  # c is woken already: the next docker poll
        assert woken(waiters) == ["a", "b", "c"]


def test_a_poll_that_finds_nothing_passes_its_turn_on_once_through_the_line(signal: WorkSignal) -> None:
    with ExitStack() as stack:
        waiters = wait_all(signal, stack, ("a", ["wasm"]), ("b", ["wasm"]), ("c", ["wasm"]))
        signal.notify(engines=["wasm"], count=1)
        assert woken(waiters) == ["a"]
        a, b, c = waiters
        a.arm()
        a.found_nothing()  # e.g. the work has a constraint only c meets
        assert woken(waiters) == ["b"]
        b.arm()
        b.found_nothing()
        assert woken(waiters) == ["c"]
        c.arm()
        c.found_nothing()  # the end of the line: nobody is woken twice for one piece of work
        assert woken(waiters) == []


def test_a_poll_that_took_the_work_wakes_nobody_else_and_one_that_leaves_passes_it_on(signal: WorkSignal) -> None:
    with ExitStack() as stack:
        a, b = wait_all(signal, stack, ("a", ["wasm"]), ("b", ["wasm"]))
        signal.notify(engines=["wasm"], count=1)
        a.arm()
        a.took_work()
        a.found_nothing()
        assert woken([a, b]) == []
    with ExitStack() as stack:
        with signal.waiting("a", ["wasm"]) as a:
            b = wait_all(signal, stack, ("b", ["wasm"]))[0]
            a.arm()
            signal.notify(engines=["wasm"], count=1)  # a waits longer, so a is woken
            assert woken([a, b]) == ["a"]
        assert woken([b]) == ["b"]  # a went away without looking (its client left): b has the turn


def test_news_for_a_node_wakes_its_poll_alone_and_a_plain_notify_wakes_all(signal: WorkSignal) -> None:
    with ExitStack() as stack:
        waiters = wait_all(signal, stack, ("a", ["wasm"]), ("b", ["wasm"]))
        signal.notify(nodes=["b"])
        assert woken(waiters) == ["b"]
        signal.notify()
        assert woken(waiters) == ["a", "b"]


def test_wakeups_relayed_to_another_replica_act_the_same_there() -> None:
    sent: list[tuple[str, str]] = []
    here, there = WorkSignal("work"), WorkSignal("work")
    here.relay = lambda channel, payload: sent.append((channel, payload))
    with ExitStack() as stack:
        waiters = wait_all(there, stack, ("a", ["docker"]), ("b", ["wasm"]), ("c", ["wasm"]))
        here.notify(engines=["wasm"], count=1)
        here.notify(nodes=["a"])
        for channel, payload in sent:
            assert channel == "work"
            there.receive(payload)
        assert woken(waiters) == ["a", "b"]
        there.receive("not json")  # what cannot be read wakes everyone rather than no one
        assert woken(waiters) == ["a", "b", "c"]


def test_a_waiting_poll_returns_when_woken_and_at_its_deadline(signal: WorkSignal) -> None:
    async def scenario() -> None:
        with signal.waiting("a", ["wasm"]) as waiter:
            waiter.arm()
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, signal.notify)
            began = loop.time()
            await waiter.wait(30)
            assert loop.time() - began < 10  # woken, not timed out
            waiter.arm()
            began = loop.time()
            await waiter.wait(0.2)
            assert loop.time() - began >= 0.19
            assert not waiter.woken

    asyncio.run(scenario())


def test_a_submission_reserves_waiting_polls_of_its_engine_and_hands_each_what_it_claimed(signal: WorkSignal) -> None:
    async def scenario() -> None:
        with ExitStack() as stack:
            a, _, c, d = wait_all(signal, stack, ("a", ["wasm"]), ("b", ["docker"]), ("c", ["wasm"]),
                                  ("d", ["wasm"]))
            d.wake()  # woken already: it looks for work itself
            assert [w.node_id for w in signal.reserve("wasm", 5)] == ["a", "c"]  # longest waiting first
            assert signal.reserve("wasm", 5) == []  # each is reserved for one submission at a time
            a.hand(["claim-1"])
            assert a.woken  # its wait ends
            assert await a.handed() == ["claim-1"]
            assert await a.handed() == []  # handed once
            # whatever else ended its wait, a reserved poll waits for what the submission claims for it
            pending = asyncio.ensure_future(c.handed())
            await asyncio.sleep(0.01)
            assert not pending.done()
            c.hand([])  # the submission claimed nothing for it (or failed): its poll goes on as before
            assert await pending == []
            assert signal.reserve("wasm", 1) == []  # woken: its poll looks for work itself
            a.arm()  # waits again
            assert [w.node_id for w in signal.reserve("wasm", 1)] == ["a"]

    asyncio.run(scenario())
