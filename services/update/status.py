"""Device status from polls, written in batches.

A poll's answer does not wait for its status row: the writer collects the polls of the last
``update.status_flush_interval`` seconds per process and upserts them in one statement (one
commit instead of one per poll, which is what makes in-sync polls cheap). Polls of one device
within a batch are folded (count added, latest arguments kept), so none is lost. When
PostgreSQL is away the batch is kept (bounded) and retried; on shutdown the last batch is
written before the pool closes. What a crash can lose is at most one interval of *status*;
scripts and inventory are unaffected.

The same transaction adds a ``device_status_history`` row (migration 028) for each device whose
status changed (proof, phase, in sync, firmware, script hash, error) and prunes that device's
history to its newest rows, so the console can show what happened without a row per poll.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from services.core.batch import BackgroundBatches, Fold
from services.update.repository import PollRecord, UpdateRepository

# Devices whose status waits at most in memory while PostgreSQL is unreachable.
MAX_PENDING = 100_000


@dataclasses.dataclass(frozen=True)
class Polls:
    """One device's polls of a batch: the latest record and how many polls it stands for."""

    record: PollRecord
    count: int = 1


def fold(earlier: Polls, later: Polls) -> Polls:
    record = later.record
    if record.hash_sent is None:
        # Keep the last hash we sent when this poll sent none (error replies).
        record = dataclasses.replace(record, hash_sent=earlier.record.hash_sent)
    if record.firmware_suspect is not None and (
        earlier.record.firmware_suspect == record.firmware_suspect
    ):
        suspect_polls = earlier.record.suspect_polls + record.suspect_polls
        record = dataclasses.replace(record, suspect_polls=suspect_polls)
    return Polls(record, earlier.count + later.count)


async def _write(connection: asyncpg.Connection, batch: list[Polls]) -> None:
    repository = UpdateRepository(connection)
    await repository.record_polls(
        [polls.record for polls in batch], [polls.count for polls in batch]
    )
    # In the same transaction: a history row for each device whose status changed with this
    # batch (proof, phase, in sync, firmware, script hash, error), not one per poll.
    await repository.record_history([polls.record.mac for polls in batch])


class StatusWriter:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._batches = BackgroundBatches[Polls](
            "device status",
            _write,
            interval=interval,
            max_pending=MAX_PENDING,
            fold=Fold(key=lambda polls: polls.record.mac, merge=fold),
        )

    def record(self, record: PollRecord, pool: asyncpg.Pool) -> None:
        """Queue one poll's status; the first call starts the background writer."""
        if record.firmware_suspect is not None:
            # This poll was answered for the suspect build: one attempt.
            record = dataclasses.replace(record, suspect_polls=1)
        self._batches.add(Polls(record), pool)

    async def flush(self) -> int:
        """Write what is queued now; the number of devices written (0 when it stays queued)."""
        return await self._batches.flush()

    async def close(self) -> None:
        """Write what is left and stop the background writer."""
        await self._batches.close()


STATUS_KEY = web.AppKey("update_status", StatusWriter)


async def status_writer_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[STATUS_KEY].close()
