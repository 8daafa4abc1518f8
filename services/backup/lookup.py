"""The inventory device and latest backup version of each PUT, for concurrent PUTs in one query.

An unchanged upload (most of them) needs two facts: is the device in the inventory, and what are
its latest version's hashes. Looked up one request at a time that is a pooled connection, a query
and the pool's reset per request; here the requests of one event-loop turn share one query.
Nothing is cached: every answer is read after its request asked, so it is as fresh as a query of
its own (a version committed before the request arrived is seen).
"""

from __future__ import annotations

import asyncio

import asyncpg

from services.backup.repository import IntakeRepository, InventoryDevice, LatestVersion
from services.backup.repository.intake import DeviceKey
from services.core.db import acquire

# The device and its latest version (None before its first).
Found = tuple[InventoryDevice, LatestVersion | None]


class IntakeLookup:
    def __init__(self) -> None:
        self._waiting: dict[DeviceKey, asyncio.Future[Found | None]] = {}
        self._rounds: set[asyncio.Task[None]] = set()

    async def lookup(
        self, pool: asyncpg.Pool, mac: str | None, hardware_id: str | None
    ) -> Found | None:
        """The inventory device with this MAC (else this hardware id; both given must agree)
        and its latest version; None when the inventory has no such device."""
        key = (mac, hardware_id)
        future = self._waiting.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._waiting:
                # The first request of a round starts its query; later ones of the turn join it.
                task = loop.create_task(self._round(pool))
                self._rounds.add(task)
                task.add_done_callback(self._rounds.discard)
            future = loop.create_future()
            self._waiting[key] = future
        # Shielded: one request going away must not cancel the others' answer.
        return await asyncio.shield(future)

    async def _round(self, pool: asyncpg.Pool) -> None:
        await asyncio.sleep(0)  # let the requests of this turn add their keys
        waiting, self._waiting = self._waiting, {}
        try:
            async with acquire(pool) as connection:
                found = await IntakeRepository(connection).inventory_devices(list(waiting))
        except Exception as error:  # every waiting request gets the failure (503 for the DB)
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
