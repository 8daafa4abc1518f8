"""Retention of stored events, by age and by count per device, on one node at a time.

The repository's advisory transaction lock makes a second node's run a no-op (like
``services/backup/retention.py``). Active alarms are kept whatever their age, and so is every
event some configured syslog destination has not been given yet: retention never turns a
destination's backlog into a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
from aiohttp import web

from services.core.config import Settings
from services.core.db import DatabaseUnavailable, acquire
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


class RetentionJob:
    """Runs retention every ``events.retention_interval`` seconds; the pool arrives with the
    first request (a service application cannot reach the listener's pool at start-up)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def ensure_started(self, pool: asyncpg.Pool) -> None:
        if self._task is None and not self._closed and self._settings.events.retention_interval:
            self._task = asyncio.get_running_loop().create_task(self._loop(pool))

    async def _loop(self, pool: asyncpg.Pool) -> None:
        while True:
            await asyncio.sleep(self._settings.events.retention_interval)
            try:
                await run_retention(pool, self._settings, datetime.now(UTC))
            except DatabaseUnavailable as error:
                log.warning("events retention: database unavailable: %s", error)
            except Exception:  # keep the loop; the next run retries
                log.exception("events retention failed")

    async def context(self, _app: web.Application) -> AsyncIterator[None]:
        yield
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
