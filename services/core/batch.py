"""Work of many requests done together: records written in batches, lookups answered per turn.

``BackgroundBatches``: records that may wait a few milliseconds, queued in memory and written in
batches by one task.

For what a request produces but need not wait for (a hand-over log line, a poll's status): the
request answers at once and one transaction per interval writes everything queued meanwhile.
What a client asked to be stored does not belong here: its 2xx waits for its own commit.

Records of one thing may be folded (``Fold``): a device's polls within an interval become one
record, so a batch has a row per device rather than per poll and nothing is lost by folding.

If PostgreSQL is unreachable the records stay queued (up to ``max_pending``, then the newest are
dropped with an error in the log) and are written when it is back. On shutdown the rest is
written. A crash loses at most one interval's records.

``TurnBatcher``: the lookups of one event-loop turn answered by one query (see its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from services.core.db import DatabaseUnavailable, acquire

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

Write = Callable[[asyncpg.Connection, list[T]], Awaitable[None]]


@dataclass(frozen=True)
class Fold(Generic[T]):
    """Queued records with the same ``key`` become one: ``merge(earlier, later)``."""

    key: Callable[[T], Hashable]
    merge: Callable[[T, T], T]


class BackgroundBatches(Generic[T]):
    def __init__(
        self,
        what: str,
        write: Write[T],
        *,
        interval: float = 0.05,
        max_pending: int = 100_000,
        fold: Fold[T] | None = None,
    ) -> None:
        self._what = what
        self._write = write
        self._interval = interval
        self._max_pending = max_pending
        self._fold = fold
        # Insertion-ordered; without a fold every record has a key of its own.
        self._pending: dict[Hashable, T] = {}
        self._serial = itertools.count()
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._dropped = 0

    def add(self, item: T, pool: asyncpg.Pool) -> None:
        """Queue one record; the first call starts the writer task."""
        if self._task is None and not self._stopping:
            self._pool = pool
            self._task = asyncio.get_running_loop().create_task(self._run())
        key = self._fold.key(item) if self._fold else next(self._serial)
        earlier = self._pending.get(key)
        if earlier is not None and self._fold is not None:
            self._pending[key] = self._fold.merge(earlier, item)
        elif len(self._pending) >= self._max_pending:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                log.error(
                    "%s: backlog full (%d queued, database unreachable?); %d dropped so far",
                    self._what,
                    len(self._pending),
                    self._dropped,
                )
            return
        else:
            self._pending[key] = item
        if self._interval <= 0:
            self._wake.set()

    async def flush(self) -> int:
        """Write what is queued now; the number written (0 when it stays queued)."""
        if not self._pending or self._pool is None:
            return 0
        batch, self._pending = self._pending, {}
        try:
            async with acquire(self._pool) as connection, connection.transaction():
                await self._write(connection, list(batch.values()))
        except (DatabaseUnavailable, OSError, asyncpg.PostgresError) as error:
            log.warning("%s: %d record(s) not written yet: %s", self._what, len(batch), error)
            self._requeue(batch)
            return 0
        return len(batch)

    def _requeue(self, batch: dict[Hashable, T]) -> None:
        """Put a failed batch back ahead of what was queued meanwhile (folded into it)."""
        queued = batch
        for key, item in self._pending.items():
            earlier = queued.get(key)
            if earlier is not None and self._fold is not None:
                queued[key] = self._fold.merge(earlier, item)
            else:
                queued[key] = item
        if len(queued) > self._max_pending:
            queued = dict(itertools.islice(queued.items(), self._max_pending))
        self._pending = queued

    async def _run(self) -> None:
        # Never cancelled (a cancelled pool.acquire can lose a connection and the pool's close
        # then waits forever): close() sets _stopping and wakes the loop instead.
        while not self._stopping:
            if self._interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            else:
                await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """Write what is left and stop the writer task."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=15)
        await self.flush()


# The answers for some keys, read with a pool; a key without an answer is absent.
Query = Callable[[asyncpg.Pool, list[K]], Awaitable[Mapping[K, R]]]


class TurnBatcher(Generic[K, R]):
    """The lookups of one event-loop turn answered by one query.

    A round: the first ``get`` while none is waiting starts a task that yields once (so the
    other requests of this turn add their keys), then calls ``query`` with that first call's
    pool and every key asked meanwhile, each once, in the order first asked. Later ``get`` calls
    of the turn join the round; one asking a key already waiting shares its answer. Once the
    query has started, the next ``get`` starts a new round: nothing is cached, every answer is
    read after its request asked.

    Each waiter gets ``found.get(key)``: None for a key the query left out. An ``Exception`` from
    the query (``DatabaseUnavailable``, a PostgreSQL error) is raised in every waiter of the
    round. If the round's task itself ends by a ``BaseException`` (cancelled with the loop),
    before or during its query, every waiter of the round is cancelled and the task re-raises.
    A waiter that is cancelled (its request went away) leaves the round and the other waiters
    alone: each awaits its answer through ``asyncio.shield``. Round tasks are kept referenced
    until done (the loop holds only weak references).
    """

    def __init__(self, query: Query[K, R]) -> None:
        self._query = query
        self._waiting: dict[K, asyncio.Future[R | None]] = {}
        self._rounds: set[asyncio.Task[None]] = set()
        # The round that has yet to take the waiting keys.
        self._collecting: asyncio.Task[None] | None = None

    def get(self, key: K, pool: asyncpg.Pool) -> Awaitable[R | None]:
        """The answer for ``key`` from this turn's round (to await)."""
        future = self._waiting.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._waiting:
                task = loop.create_task(self._round(pool))
                self._rounds.add(task)
                self._collecting = task
                task.add_done_callback(self._round_done)
            future = loop.create_future()
            self._waiting[key] = future
        return asyncio.shield(future)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._rounds.discard(task)
        if task is self._collecting:
            # Cancelled before it took its keys (even before it first ran): they must not wait
            # for it, and the next get must start a round of its own.
            self._collecting = None
            waiting, self._waiting = self._waiting, {}
            for future in waiting.values():
                future.cancel()

    async def _round(self, pool: asyncpg.Pool) -> None:
        await asyncio.sleep(0)  # let the requests of this turn add their keys
        waiting, self._waiting = self._waiting, {}
        self._collecting = None
        try:
            found = await self._query(pool, list(waiting))
        except Exception as error:
            for future in waiting.values():
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException:
            for future in waiting.values():
                future.cancel()
            raise
        for key, future in waiting.items():
            if not future.done():
                future.set_result(found.get(key))
