"""Device status from polls, written in batches.

A poll's answer does not wait for its status row: the writer collects the polls of the last
``update.status_flush_interval`` seconds per process and upserts them in one statement (one
commit instead of one per poll, which is what makes in-sync polls cheap). Polls of one device
within a batch are folded (count added, latest arguments kept), so none is lost. When
PostgreSQL is away the batch is kept (bounded) and retried; on shutdown the last batch is
written before the pool closes. What a crash can lose is at most one interval of *status*;
scripts and inventory are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from services.core.db import DatabaseUnavailable, acquire
from services.update.repository import PollRecord, UpdateRepository

log = logging.getLogger(__name__)

# Devices whose status waits at most in memory while PostgreSQL is unreachable.
MAX_PENDING = 100_000


class StatusWriter:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending: dict[str, tuple[PollRecord, int]] = {}
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def record(self, record: PollRecord, pool: asyncpg.Pool) -> None:
        """Queue one poll's status; the first call starts the background writer."""
        if self._task is None:
            self._pool = pool
            self._task = asyncio.get_running_loop().create_task(self._run(pool))
        previous = self._pending.get(record.mac)
        count = previous[1] + 1 if previous else 1
        if previous is not None and record.hash_sent is None:
            # Keep the last hash we sent when this poll sent none (error replies).
            record = dataclasses.replace(record, hash_sent=previous[0].hash_sent)
        if record.firmware_suspect is not None:
            earlier = 0
            if previous is not None and previous[0].firmware_suspect == record.firmware_suspect:
                earlier = previous[0].suspect_polls
            record = dataclasses.replace(record, suspect_polls=earlier + 1)
        if previous is None and len(self._pending) >= MAX_PENDING:
            log.error("device status backlog full (%d devices); dropping a poll", MAX_PENDING)
            return
        self._pending[record.mac] = (record, count)
        if self.interval <= 0:
            self._wake.set()

    async def flush(self, pool: asyncpg.Pool) -> int:
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        records = [item[0] for item in batch.values()]
        counts = [item[1] for item in batch.values()]
        try:
            async with acquire(pool) as connection:
                await UpdateRepository(connection).record_polls(records, counts)
        except (DatabaseUnavailable, asyncpg.PostgresError) as error:
            log.warning("device status not written yet (%d devices): %s", len(batch), error)
            for mac, (record, count) in batch.items():
                newer = self._pending.get(mac)
                self._pending[mac] = (newer[0], newer[1] + count) if newer else (record, count)
            return 0
        return len(batch)

    async def _run(self, pool: asyncpg.Pool) -> None:
        # Never cancelled (a cancelled pool.acquire can lose a connection, and the pool's close
        # then waits forever): close() sets _stopping and wakes the loop, which writes the last
        # batch and returns.
        while not self._stopping:
            if self.interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
            else:
                await self._wake.wait()
            self._wake.clear()
            await self.flush(pool)

    async def close(self) -> None:
        """Write what is left and stop the background writer."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=15)
        if self._pool is not None and self._pending:
            await self.flush(self._pool)


STATUS_KEY = web.AppKey("update_status", StatusWriter)


async def status_writer_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[STATUS_KEY].close()
