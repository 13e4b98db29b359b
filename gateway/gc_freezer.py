"""The garbage collector's full passes kept short in the gateway process: what has lived a while is frozen out.

A full pass walks every object the collector tracks and holds the event loop meanwhile. With 1,000 agents' polls
waiting, their requests, coroutines and connections (some 130 objects each) made a pass take 40-100 ms, and one
came every ten seconds or so as polls ended and began: a job submitted then waited for it. So every
FREEZE_SECONDS what exists is frozen (`gc.freeze`, which costs nothing), and a pass walks only what is newer. A
frozen object is still freed as soon as nothing refers to it; only garbage in reference cycles waits, until every
THAW_SECONDS everything is thawed, collected in one full pass and frozen again.
"""

from __future__ import annotations

import asyncio
import gc

FREEZE_SECONDS = 5.0
THAW_SECONDS = 600.0


def collect_and_freeze() -> None:
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def run_forever() -> None:
    """From the start (collected and frozen at once: the modules and the app live as long as the process)."""
    loop = asyncio.get_running_loop()
    collect_and_freeze()
    thawed = loop.time()
    while True:
        await asyncio.sleep(FREEZE_SECONDS)
        if loop.time() - thawed >= THAW_SECONDS:
            collect_and_freeze()
            thawed = loop.time()
        else:
            gc.freeze()
