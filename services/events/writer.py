"""Group commit: requests hand their event to one writer task per process, which stores what
arrived within a few milliseconds in one transaction and then answers every waiting request.

A device gets its 2xx only after the commit that holds its event (the future resolves after
``COMMIT`` returned). If the transaction fails because PostgreSQL is unreachable, every event of
the batch fails with :class:`DatabaseUnavailable` (503: the device keeps its queue and retries).
If it fails for one event's content (a bug, a constraint), the batch is retried one event per
transaction so only that event is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from services.core import errors
from services.core.db import DatabaseUnavailable, acquire
from services.events.repository import EventRepository, NewEvent, Stored

log = logging.getLogger(__name__)

Pending = tuple[NewEvent, "asyncio.Future[Stored]"]


class GroupWriter:
    def __init__(
        self,
        *,
        window: float,
        batch: int,
        forward_repeats: bool,
        on_commit: Callable[[int, int], None] | None = None,
    ) -> None:
        """``on_commit(stored, repeats)`` after every committed batch (the metrics)."""
        self._window = window
        self._batch = batch
        self._forward_repeats = forward_repeats
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._on_commit = on_commit
        # Per-process counters.
        self.stored = 0
        self.repeats = 0
        self.batches = 0

    def start(self, pool: asyncpg.Pool) -> None:
        if self._task is None and not self._closed:
            self._pool = pool
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, event: NewEvent) -> Stored:
        if self._closed or self._task is None:
            raise DatabaseUnavailable("the event writer is not running")
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._queue.append((event, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._window > 0 and not self._closed:
                # Let concurrent requests join this transaction.
                await asyncio.sleep(self._window)
            self._wake.clear()
            await self._drain()
            if self._closed:
                return

    def _take(self) -> list[Pending]:
        batch, self._queue = self._queue[: self._batch], self._queue[self._batch :]
        return batch

    async def _drain(self) -> None:
        """Commit what is queued, batch after batch, on one pooled connection: giving it back
        costs the pool's reset (a round trip) that the next batch would wait for."""
        assert self._pool is not None
        while self._queue:
            batch = self._take()
            try:
                async with acquire(self._pool) as connection:
                    while True:
                        await self._commit(connection, batch)
                        if not self._queue:
                            break
                        batch = self._take()
            except DatabaseUnavailable as error:
                # No connection, or it was lost under this batch (the pool replaces it).
                log.warning(
                    "events: %d event(s) not stored, database unavailable: %s", len(batch), error
                )
                for _, future in batch:
                    if not future.done():
                        future.set_exception(DatabaseUnavailable(str(error)))

    async def _commit(self, connection: asyncpg.Connection, batch: list[Pending]) -> None:
        """Store one batch and answer its requests. A lost connection propagates (acquire()
        turns it into DatabaseUnavailable); any other failure is this batch's alone."""
        events = [event for event, _ in batch]
        try:
            results = await EventRepository(connection).append(
                events, forward_repeats=self._forward_repeats
            )
        except asyncpg.PostgresError as error:
            if connection.is_closed():
                raise
            if len(batch) == 1:
                log.error("events: event refused by the database: %s", error)
                if not batch[0][1].done():
                    batch[0][1].set_exception(
                        errors.Unprocessable("the event could not be stored; see the server log")
                    )
                return
            log.warning("events: batch failed (%s); storing its events one by one", error)
            for item in batch:
                await self._commit(connection, [item])
            return
        except (OSError, asyncpg.InterfaceError):
            raise
        except Exception:  # a bug must not kill the writer: fail this batch, keep running
            log.exception("events: storing a batch failed")
            for _, future in batch:
                if not future.done():
                    future.set_exception(DatabaseUnavailable("storing failed"))
            return
        self.batches += 1
        repeats = sum(1 for result in results if result.repeat)
        self.repeats += repeats
        self.stored += len(results) - repeats
        if self._on_commit is not None:
            self._on_commit(len(results) - repeats, repeats)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Store what is queued, then stop (requests in flight still get their answer)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._queue:
            if not future.done():
                future.set_exception(DatabaseUnavailable("shutting down"))
