"""What the update service keeps on its application, and the inventory snapshot cache."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from services.core.config import Settings
from services.core.inventory import inventory_version, load_inventory
from services.update.firmware import FirmwareStore
from services.update.provisioning import Snapshot
from services.update.scripts import ScriptStore


class SnapshotCache:
    """The inventory in memory, reloaded when its version changed.

    Each poll reads the version (one indexed single-row read); a committed inventory change is
    therefore seen by the very next poll, never served stale.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()

    async def get(self, connection: asyncpg.Connection) -> Snapshot:
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


SETTINGS_KEY = web.AppKey("update_settings", Settings)
STORE_KEY = web.AppKey("update_scripts", ScriptStore)
FIRMWARE_KEY = web.AppKey("update_firmware", FirmwareStore)
SNAPSHOTS_KEY = web.AppKey("update_snapshots", SnapshotCache)
