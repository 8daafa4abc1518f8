"""One pooled connection LISTENing on a few channels, set up again whenever it is lost.

The pattern behind every in-memory cache here that must never serve stale data: while the
connection is up (``live``), NOTIFY tells of each committed change as soon as it commits; while
it is down (not yet up, lost, PostgreSQL restarted) the owner reads from PostgreSQL instead. When
it comes (back), ``on_listening`` runs after LISTEN and before ``live``, so the owner can read
its state afresh: nothing committed in between is missed.

The start-up task is awaited on close, never cancelled: cancelling it inside ``pool.acquire``
could lose the connection, and the pool's close would then wait for it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

Notification = Callable[[object, int, str, str], None]

_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PoolListener:
    def __init__(
        self,
        channels: Mapping[str, Notification],
        *,
        on_listening: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.live = False
        self._channels = dict(channels)
        self._on_listening = on_listening
        self._on_lost_hook = on_lost
        self._pool: asyncpg.Pool | None = None
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self, pool: asyncpg.Pool) -> None:
        """Begin listening in the background (idempotent)."""
        if self._task is None and not self._closed:
            self._pool = pool
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self._pool is not None
        delay = 0.5
        while not self._closed:
            try:
                connection = await self._pool.acquire(timeout=5.0)
            except (TimeoutError, *_ERRORS):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            try:
                for channel, callback in self._channels.items():
                    await connection.add_listener(channel, callback)
                # Listening first, then reading: nothing committed in between is missed.
                if self._on_listening is not None:
                    await self._on_listening(connection)
            except _ERRORS:
                await self._release(connection)
                await asyncio.sleep(delay)
                continue
            if self._closed:
                await self._release(connection)
                return
            connection.add_termination_listener(self._lost)
            self._connection = connection
            self.live = True
            return

    def _lost(self, _connection: object) -> None:
        self.live = False
        self._connection = None
        if self._on_lost_hook is not None:
            self._on_lost_hook()
        if self._pool is not None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _release(self, connection: asyncpg.Connection) -> None:
        with contextlib.suppress(ValueError, KeyError):
            connection.remove_termination_listener(self._lost)
        with contextlib.suppress(*_ERRORS):
            for channel, callback in self._channels.items():
                await connection.remove_listener(channel, callback)
        assert self._pool is not None
        await self._pool.release(connection)

    async def close(self) -> None:
        """Stop listening and give the connection back (the pool's close waits for it)."""
        self._closed = True
        self.live = False
        if self._task is not None:
            await asyncio.wait([self._task], timeout=15)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self._release(connection)
