"""What the update service keeps on its application, and the inventory snapshot cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp import web

from services.core.config import Settings
from services.core.inventory import inventory_version, load_inventory
from services.core.listen import PoolListener
from services.core.ratelimit import AddressLimiter
from services.update.canary import CanaryState
from services.update.firmware import FirmwareSource
from services.update.provisioning import BodyCache, Lifecycle, Snapshot
from services.update.repository import UpdateRepository
from services.update.scripts import ScriptStore
from services.update.versions import PublishedScripts, ScriptVersionRepository


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
        # An inventory NOTIFY whose payload was not a version: read the version until the
        # connection is set up again.
        self._unsure = False
        # The published script version every node serves (update.scripts_source = "database"),
        # and the open canary roll-out of a newer one.
        self.script_version: int | None = None
        self.canary = CanaryState()
        self._listen = PoolListener(
            {
                "pbxfront_inventory": self._on_inventory,
                "pbxfront_restage": self._on_restage,
                "pbxfront_scripts": self._on_scripts,
                "pbxfront_rollouts": self._on_rollouts,
            },
            on_listening=self._read_state,
        )

    @property
    def live(self) -> bool:
        return self._listen.live and not self._unsure

    def start(self, pool: asyncpg.Pool) -> None:
        """Begin listening in the background. Called once by :func:`change_watch_ctx` when the
        application starts; any later call is a no-op."""
        self._listen.start(pool)

    async def _read_state(self, connection: asyncpg.Connection) -> None:
        self.version = await inventory_version(connection)
        self.restage = await UpdateRepository(connection).pending_restages()
        self.script_version = await ScriptVersionRepository(connection).current_id()
        self.canary.stale = True
        self._unsure = False

    def _on_inventory(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        if payload.isdigit():
            self.version = max(self.version or 0, int(payload))
        else:
            self._unsure = True

    def _on_restage(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self.restage.add(payload)

    def _on_rollouts(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self.canary.stale = True

    def _on_scripts(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        if payload.isdigit():
            self.script_version = int(payload) or None
        else:
            self._unsure = True

    async def close(self) -> None:
        """Stop listening and give the connection back."""
        await self._listen.close()


SETTINGS_KEY = web.AppKey("update_settings", Settings)
STORE_KEY = web.AppKey("update_scripts", ScriptStore)
FIRMWARE_KEY = web.AppKey("update_firmware", FirmwareSource)
SNAPSHOTS_KEY = web.AppKey("update_snapshots", SnapshotCache)
BODIES_KEY = web.AppKey("update_bodies", BodyCache)
WATCH_KEY = web.AppKey("update_watch", ChangeWatch)
LIFECYCLE_KEY = web.AppKey("update_lifecycle", Lifecycle)
PUBLISHED_KEY = web.AppKey("update_published", PublishedScripts)
# Template data composed in from outside the update service (serve.py), or None.
ADDITIONS_KEY = web.AppKey("update_context_additions", object)
# update.auto_adopt: (pool, mac, device type, source address) -> adopted?, composed in serve.py.
ADOPTER_KEY = web.AppKey("update_auto_adopter", object)
# Polls naming devices not in the inventory, per source address.
UNKNOWN_LIMITER_KEY = web.AppKey("update_unknown_limiter", AddressLimiter)


def change_watch_ctx(
    pool: asyncpg.Pool | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx that starts the application's :class:`ChangeWatch` with the node (so the
    first poll after a restart already finds it listening) and closes it on shutdown."""

    async def watch_ctx(app: web.Application) -> AsyncIterator[None]:
        if pool is not None:
            app[WATCH_KEY].start(pool)
        yield
        await app[WATCH_KEY].close()

    return watch_ctx
