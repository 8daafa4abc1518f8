"""The database errors every part of ``core.db`` raises."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or did not answer in time; callers answer 503."""


class DatabaseConfigError(Exception):
    """The configured database cannot be used at all (bad DSN, refused login, no server)."""


@contextlib.asynccontextmanager
async def transaction(db: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``db``: a pool lends a connection for it, a connection is used as is
    (a nested call becomes a savepoint)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as connection, connection.transaction():
            yield connection
    else:
        async with db.transaction():
            yield db
