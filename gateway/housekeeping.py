"""Periodic sweeps: fail and reschedule executions whose lease expired, mark silent nodes DISCONNECTED."""

from __future__ import annotations

import asyncio
import logging

from gateway.services import Services

log = logging.getLogger("shoal.gateway.housekeeping")


def sweep(svc: Services) -> int:
    """One pass; returns how many executions were rescheduled."""
    rescheduled = svc.store.disconnect_silent_nodes(svc.settings.disconnect_seconds)
    rescheduled += svc.store.expire_leases()
    svc.store.expire_jobs()
    return rescheduled


async def run_forever(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.settings.housekeeping_seconds)
        try:
            rescheduled = await svc.db(sweep, svc)
        except Exception:  # a failed sweep must not stop the next one
            log.exception("housekeeping sweep failed")
            continue
        if rescheduled:
            log.info("rescheduled %d executions whose lease expired", rescheduled)
            svc.work.notify()
