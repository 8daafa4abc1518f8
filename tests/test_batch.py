"""core/batch.py: records written in batches, kept while the write fails, flushed on close."""

from __future__ import annotations

import asyncio

import asyncpg

from services.core.batch import BackgroundBatches
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


async def test_a_failing_write_keeps_the_records_until_it_succeeds(pool: asyncpg.Pool) -> None:
    batches = BackgroundBatches[int]("test", insert, interval=0.02)
    # The table does not exist yet: every attempt fails and the records stay queued.
    for n in range(5):
        batches.add(n, pool)
    await asyncio.sleep(0.2)
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
