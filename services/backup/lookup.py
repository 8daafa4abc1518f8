"""The inventory device and latest backup version of each PUT, for concurrent PUTs in one query.

An unchanged upload (most of them) needs two facts: is the device in the inventory, and what are
its latest version's hashes. Looked up one request at a time that is a pooled connection, a query
and the pool's reset per request; here the requests of one event-loop turn share one query
(``core.batch.TurnBatcher``).
Nothing is cached: every answer is read after its request asked, so it is as fresh as a query of
its own (a version committed before the request arrived is seen).
"""

from __future__ import annotations

import asyncpg

from services.backup.repository import IntakeRepository, InventoryDevice, LatestVersion
from services.backup.repository.intake import DeviceKey
from services.core.batch import TurnBatcher
from services.core.db import acquire

# The device and its latest version (None before its first).
Found = tuple[InventoryDevice, LatestVersion | None]


async def _inventory_devices(pool: asyncpg.Pool, keys: list[DeviceKey]) -> dict[DeviceKey, Found]:
    async with acquire(pool) as connection:
        return await IntakeRepository(connection).inventory_devices(keys)


class IntakeLookup:
    def __init__(self) -> None:
        self._batcher = TurnBatcher[DeviceKey, Found](_inventory_devices)

    async def lookup(
        self, pool: asyncpg.Pool, mac: str | None, hardware_id: str | None
    ) -> Found | None:
        """The inventory device with this MAC (else this hardware id; both given must agree)
        and its latest version; None when the inventory has no such device. A database failure
        is raised in every request of the turn (503)."""
        return await self._batcher.get((mac, hardware_id), pool)
