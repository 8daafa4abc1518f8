"""What the update service keeps on its application, and the inventory snapshot cache."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from services.core.config import Settings
from services.core.inventory import inventory_version, load_inventory
from services.update.firmware import FirmwareStore
from services.update.provisioning import BodyCache, Snapshot
from services.update.repository import UpdateRepository
from services.update.scripts import ScriptStore


class SnapshotCache:
    """The inventory in memory, reloaded when its version changed (see :class:`ChangeWatch` for
    how a poll learns the current version)."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()

    def current(self, version: int | None) -> Snapshot | None:
        """The cached snapshot if it is of ``version``; no database access."""
        snapshot = self._snapshot
        if version is not None and snapshot is not None and snapshot.version == version:
            return snapshot
        return None

    async def get(self, connection: asyncpg.Connection, version: int | None = None) -> Snapshot:
        """The snapshot for ``version`` (read from the database when not given)."""
        if version is None:
            version = await inventory_version(connection)
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == version:
            return snapshot
        async with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.version == version:
                return snapshot
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                version = await inventory_version(connection)
                inventory = await load_inventory(connection)
            snapshot = Snapshot.build(version, inventory)
            self._snapshot = snapshot
            return snapshot


class ChangeWatch:
    """The current inventory version and the devices with a restage pending, kept up to date by
    LISTEN (``pbxfront_inventory`` carries the new version, ``pbxfront_restage`` a MAC) on one
    connection per process, so an in-sync poll needs no query at all.

    PostgreSQL sends a NOTIFY when the change commits; this process applies it as soon as it
    reads it, before any request that arrives later. While the listening connection is down
    (not yet started, lost, PostgreSQL restarted) ``live`` is False and every poll reads the
    version from the database instead, so a committed change is never missed.
    """

    def __init__(self) -> None:
        self.version: int | None = None
        self.restage: set[str] = set()
        self.live = False
        self._connection: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
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
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            try:
                await connection.add_listener("pbxfront_inventory", self._on_inventory)
                await connection.add_listener("pbxfront_restage", self._on_restage)
                # Listening first, then reading: nothing committed in between is missed.
                self.version = await inventory_version(connection)
                self.restage = await UpdateRepository(connection).pending_restages()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._release(connection)
                await asyncio.sleep(delay)
                continue
            if self._closed:
                await self._release(connection)
                return
            connection.add_termination_listener(self._on_lost)
            self._connection = connection
            self.live = True
            return

    def _on_inventory(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        if payload.isdigit():
            self.version = max(self.version or 0, int(payload))
        else:  # unknown payload: fall back to reading the version until reconnected
            self.live = False

    def _on_restage(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self.restage.add(payload)

    def _on_lost(self, _connection: object) -> None:
        self.live = False
        self._connection = None
        if self._pool is not None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _release(self, connection: asyncpg.Connection) -> None:
        with contextlib.suppress(ValueError, KeyError):
            connection.remove_termination_listener(self._on_lost)
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await connection.remove_listener("pbxfront_inventory", self._on_inventory)
            await connection.remove_listener("pbxfront_restage", self._on_restage)
        assert self._pool is not None
        await self._pool.release(connection)

    async def close(self) -> None:
        """Stop listening and give the connection back (the pool's close waits for it).

        The start-up task is awaited, not cancelled: cancelling it while the pool hands it a
        connection could lose that connection, and the pool's close would wait for it forever.
        """
        self._closed = True
        self.live = False
        if self._task is not None:
            await asyncio.wait([self._task], timeout=15)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self._release(connection)


SETTINGS_KEY = web.AppKey("update_settings", Settings)
STORE_KEY = web.AppKey("update_scripts", ScriptStore)
FIRMWARE_KEY = web.AppKey("update_firmware", FirmwareStore)
SNAPSHOTS_KEY = web.AppKey("update_snapshots", SnapshotCache)
BODIES_KEY = web.AppKey("update_bodies", BodyCache)
WATCH_KEY = web.AppKey("update_watch", ChangeWatch)


async def change_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[WATCH_KEY].close()
