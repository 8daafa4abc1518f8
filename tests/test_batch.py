"""core/batch.py (records written in batches, kept while the write fails, flushed on close;
lookups of one event-loop turn answered by one query) and core/periodic.py (work repeated every
so often)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import pytest
from aiohttp import web

from services.core.batch import BackgroundBatches, Fold, TurnBatcher
from services.core.periodic import PeriodicJob
from tests.conftest import until


async def insert(connection: asyncpg.Connection, numbers: list[int]) -> None:
    await connection.executemany("INSERT INTO batch_test (n) VALUES ($1)", [(n,) for n in numbers])


async def stored(pool: asyncpg.Pool) -> list[int]:
    return [row["n"] for row in await pool.fetch("SELECT n FROM batch_test ORDER BY n")]


async def test_records_are_written_in_one_batch_after_the_interval(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE batch_test (n integer)")
    batches = BackgroundBatches[int]("test", insert, interval=0.05)
    for n in range(100):
        batches.add(n, pool)

    async def all_written() -> bool:
        return await stored(pool) == list(range(100))

    await until(all_written, timeout=5)
    await batches.close()


async def test_a_failing_write_keeps_the_records_until_it_succeeds(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    batches = BackgroundBatches[int]("test", insert, interval=0.02)
    # The table does not exist yet: every attempt fails and the records stay queued.
    with caplog.at_level(logging.WARNING, logger="services.core.batch"):
        for n in range(5):
            batches.add(n, pool)
        await until(lambda: sum("not written yet" in r.getMessage() for r in caplog.records) >= 3)
    assert await batches.flush() == 0
    await pool.execute("CREATE TABLE batch_test (n integer)")
    batches.add(5, pool)

    async def all_written() -> bool:
        return await stored(pool) == list(range(6))

    await until(all_written, timeout=5)
    await batches.close()


async def test_close_writes_the_rest_and_a_full_backlog_drops_the_newest(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("CREATE TABLE batch_test (n integer)")
    batches = BackgroundBatches[int]("test", insert, interval=3600, max_pending=3)
    for n in range(5):
        batches.add(n, pool)
    await batches.close()
    assert await stored(pool) == [0, 1, 2]


async def insert_pairs(connection: asyncpg.Connection, pairs: list[tuple[str, int]]) -> None:
    await connection.executemany("INSERT INTO fold_test (k, n) VALUES ($1, $2)", pairs)


def add_up(earlier: tuple[str, int], later: tuple[str, int]) -> tuple[str, int]:
    return later[0], earlier[1] + later[1]


async def test_folded_records_are_one_row_each_also_across_a_failed_write(
    pool: asyncpg.Pool,
) -> None:
    batches = BackgroundBatches[tuple[str, int]](
        "test", insert_pairs, interval=3600, max_pending=2, fold=Fold(lambda p: p[0], add_up)
    )
    for pair in [("a", 1), ("b", 10), ("a", 2), ("c", 100)]:
        batches.add(pair, pool)
    # The table does not exist yet: the batch stays queued, folded, without the dropped "c".
    assert await batches.flush() == 0
    await pool.execute("CREATE TABLE fold_test (k text, n integer)")
    # What arrives after the failure folds into the records kept from it; "d" has no room.
    batches.add(("b", 20), pool)
    batches.add(("d", 1000), pool)
    assert await batches.flush() == 2
    rows = await pool.fetch("SELECT k, n FROM fold_test ORDER BY k")
    assert [(row["k"], row["n"]) for row in rows] == [("a", 3), ("b", 30)]
    await batches.close()


async def test_periodic_job_survives_failures_and_stops_without_cancelling(
    pool: asyncpg.Pool,
) -> None:
    runs: list[int] = []

    async def job(job_pool: asyncpg.Pool) -> None:
        runs.append(await job_pool.fetchval("SELECT 1"))
        if len(runs) == 1:
            raise RuntimeError("the first run fails; the loop goes on")

    periodic = PeriodicJob("test job", 0.02, job, pool)
    context = periodic.context(web.Application())
    await anext(context)
    assert periodic.running  # started with its application, no request needed
    await until(lambda: len(runs) >= 3, timeout=5)
    with contextlib.suppress(StopAsyncIteration):
        await anext(context)
    stopped_at = len(runs)
    await asyncio.sleep(0.1)
    assert len(runs) == stopped_at


async def test_periodic_job_with_interval_zero_never_starts(pool: asyncpg.Pool) -> None:
    async def job(_pool: asyncpg.Pool) -> None:
        raise AssertionError("must not run")

    periodic = PeriodicJob("off", 0, job, pool)
    context = periodic.context(web.Application())
    await anext(context)
    assert not periodic.running
    with contextlib.suppress(StopAsyncIteration):
        await anext(context)


class Tens:
    """A lookup for TurnBatcher: ten times each positive key, read from PostgreSQL; the keys of
    every query it ran, in order."""

    def __init__(self, sql: str = "SELECT k, k * 10 AS v FROM unnest($1::int[]) AS k") -> None:
        self.sql = sql
        self.queries: list[list[int]] = []

    async def __call__(self, pool: asyncpg.Pool, keys: list[int]) -> dict[int, int]:
        self.queries.append(keys)
        rows = await pool.fetch(self.sql + " WHERE k > 0", keys)
        return {row["k"]: row["v"] for row in rows}


async def test_the_lookups_of_one_turn_are_one_query(pool: asyncpg.Pool) -> None:
    tens = Tens()
    batcher = TurnBatcher[int, int](tens)
    answers = await asyncio.gather(*(batcher.get(key, pool) for key in [3, 1, 2, 1, -5]))
    # One query, each key once in the order first asked; a key it did not answer is None.
    assert tens.queries == [[3, 1, 2, -5]]
    assert answers == [30, 10, 20, 10, None]


async def test_the_next_turn_starts_a_new_round(pool: asyncpg.Pool) -> None:
    tens = Tens()
    batcher = TurnBatcher[int, int](tens)
    assert await batcher.get(1, pool) == 10
    # Nothing is cached: the same key again is a new query.
    assert list(await asyncio.gather(batcher.get(1, pool), batcher.get(2, pool))) == [10, 20]
    assert tens.queries == [[1], [1, 2]]


async def test_a_key_asked_while_the_query_runs_waits_for_the_next_round(
    pool: asyncpg.Pool,
) -> None:
    tens = Tens("SELECT k, k * 10 AS v, pg_sleep(0.05) FROM unnest($1::int[]) AS k")
    batcher = TurnBatcher[int, int](tens)
    first = asyncio.ensure_future(batcher.get(1, pool))
    await until(lambda: len(tens.queries) == 1)
    assert await batcher.get(1, pool) == 10
    assert await first == 10
    assert tens.queries == [[1], [1]]


async def test_a_failing_query_raises_in_every_waiter_of_its_round(pool: asyncpg.Pool) -> None:
    tens = Tens("SELECT k, k / 0 AS v FROM unnest($1::int[]) AS k")
    batcher = TurnBatcher[int, int](tens)
    answers = await asyncio.gather(
        *(batcher.get(key, pool) for key in [1, 2, 2]), return_exceptions=True
    )
    assert len(tens.queries) == 1
    assert [type(answer) for answer in answers] == [asyncpg.DivisionByZeroError] * 3
    # The next round is a query of its own.
    tens.sql = "SELECT k, k * 10 AS v FROM unnest($1::int[]) AS k"
    assert await batcher.get(2, pool) == 20


async def test_a_cancelled_waiter_leaves_the_others_their_answers(pool: asyncpg.Pool) -> None:
    tens = Tens("SELECT k, k * 10 AS v, pg_sleep(0.05) FROM unnest($1::int[]) AS k")
    batcher = TurnBatcher[int, int](tens)

    async def ask(key: int) -> int | None:
        return await batcher.get(key, pool)

    gone, same_key, other_key = (asyncio.ensure_future(ask(key)) for key in [1, 1, 2])
    await until(lambda: len(tens.queries) == 1)
    gone.cancel()
    assert list(await asyncio.gather(same_key, other_key)) == [10, 20]
    assert gone.cancelled()
    assert tens.queries == [[1, 2]]


async def test_a_round_cancelled_before_its_query_cancels_its_waiters(pool: asyncpg.Pool) -> None:
    tens = Tens("SELECT k, k * 10 AS v FROM unnest($1::int[]) AS k")
    batcher = TurnBatcher[int, int](tens)
    waiter = asyncio.ensure_future(batcher.get(1, pool))
    (round_task,) = batcher._rounds  # the loop stops it (shutdown) before it ran
    round_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert tens.queries == []
    # Nothing is left waiting for the dead round: the next lookup has a round of its own.
    assert await asyncio.wait_for(batcher.get(1, pool), 5) == 10
