"""The asyncpg pool (JSON codecs, sizes), the app context that owns it, and ``acquire`` /
``transaction`` with a clear 503 when the database is away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp import web

from services.core.config import DatabaseSettings, Settings
from services.core.db.base import (
    DatabaseConfigError,
    DatabaseUnavailable,
)
from services.core.db.migrations import (
    migrate,
)
from services.core.db.server import (
    database_dsn,
    describe_dsn,
)

POOL_KEY = web.AppKey("pool", asyncpg.Pool)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog"
    )


def _json_dumps(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_loads(value: str) -> Any:
    import json

    return json.loads(value)


async def create_pool(dsn: str, settings: DatabaseSettings) -> asyncpg.Pool:
    """Open a pool; raise :class:`DatabaseConfigError` with one line saying why if it cannot."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
            init=_init_connection,
            # Named in pg_stat_activity (what `db restore` shows when it refuses a database in
            # use), unless the DSN names the sessions itself.
            server_settings={} if "application_name=" in dsn else {"application_name": "pbxfront"},
        )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        reason = str(error) or type(error).__name__
        raise DatabaseConfigError(
            f"database {describe_dsn(dsn)}: cannot connect: {reason}"
        ) from None
    return pool


@contextlib.asynccontextmanager
async def open_database(
    settings: Settings, *, run_migrations: bool = True
) -> AsyncIterator[asyncpg.Pool]:
    """DSN (embedded or configured) + pool + migrations, for ``serve`` and every CLI command."""
    async with database_dsn(settings) as dsn:
        pool = await create_pool(dsn, settings.database)
        try:
            if run_migrations:
                async with pool.acquire() as connection:
                    await migrate(connection)
            yield pool
        finally:
            await pool.close()


def pool_ctx(pool: asyncpg.Pool) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that puts an already open, process-wide pool on an application."""

    async def attach(app: web.Application) -> AsyncIterator[None]:
        app[POOL_KEY] = pool
        yield

    return attach


# Errors meaning "PostgreSQL is not there right now" as opposed to a bug in a query.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
)


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool, wait: float = 2.0) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; connection-level failures become :class:`DatabaseUnavailable`."""
    try:
        async with pool.acquire(timeout=wait) as connection:
            yield connection
    except _UNAVAILABLE as error:
        # A lost server (restarted, failed over) breaks every pooled connection, not just this
        # one: replace them all on their next use instead of failing one request each. (Not for
        # a timeout: a busy pool or a slow server keeps its connections.)
        if not isinstance(error, TimeoutError):
            with contextlib.suppress(Exception):
                await pool.expire_connections()
        raise DatabaseUnavailable(str(error) or type(error).__name__) from error
