"""Retention of stored events, by age and by count per device, on one node at a time.

The repository's advisory transaction lock makes a second node's run a no-op (like
``services/backup/retention.py``). Active alarms are kept whatever their age, and so is every
event some configured syslog destination has not been given yet: retention never turns a
destination's backlog into a gap.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg

from services.core.config import Settings
from services.core.db import acquire
from services.core.periodic import PeriodicJob
from services.events.repository import EventRepository
from services.events.syslog import destinations

log = logging.getLogger(__name__)


async def run_retention(
    pool: asyncpg.Pool, settings: Settings, now: datetime, *, dry_run: bool = False
) -> int | None:
    """Events deleted (or, dry, that would be); None when another node is running it."""
    names = [d.name for d in destinations(settings.events.destinations)]
    async with acquire(pool) as connection:
        deleted = await EventRepository(connection).prune(
            now,
            days=settings.events.retention_days,
            per_device=settings.events.retention_per_device,
            destinations=names,
            dry_run=dry_run,
        )
    if deleted and not dry_run:
        log.info("events retention: deleted %d event(s)", deleted)
    return deleted


def retention_job(settings: Settings, pool: asyncpg.Pool | None) -> PeriodicJob:
    """Retention every ``events.retention_interval`` seconds (one node at a time), from start."""
    return PeriodicJob(
        "events retention",
        settings.events.retention_interval,
        lambda job_pool: run_retention(job_pool, settings, datetime.now(UTC)),
        pool,
    )
