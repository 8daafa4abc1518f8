"""Customers and their directories in memory, current the moment a change commits.

Each customer's :class:`CustomerDirectory` is loaded when first searched and kept until
PostgreSQL says it changed: the contacts service sends ``NOTIFY pbxfront_contacts`` (payload:
the customer id) when an upload or a rollback makes another version current, the inventory sends
``NOTIFY pbxfront_inventory`` on any change (passwords, numbering plans, directory variables).
Both are delivered on commit, on one listening connection per process.

With ``preload`` (the default) every customer's directory is also built in the background as
soon as the connection is up, and rebuilt right after each change, so a phone's search finds it
ready instead of paying for the load; without it, a directory is loaded by its first search.

While that connection is down (not yet up, lost, PostgreSQL restarted) nothing is cached: every
search reads from PostgreSQL, so a committed change is never missed. When it comes (back), all
caches are dropped, since changes in between went unheard. A load that raced with a
notification is used for the search that asked for it but not kept (generation counters).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import asyncpg

from services.core.db import DatabaseUnavailable, acquire
from services.core.listen import PoolListener
from services.directory.index import CustomerDirectory, CustomerRecord
from services.directory.repository import DirectoryRepository

log = logging.getLogger(__name__)

CONTACTS_CHANNEL = "pbxfront_contacts"
INVENTORY_CHANNEL = "pbxfront_inventory"


class DirectoryCache:
    def __init__(
        self, pool: asyncpg.Pool, default_number_format: str, *, preload: bool = True
    ) -> None:
        self._pool = pool
        self._number_format = default_number_format
        self._preload = preload
        # Customers (lower-cased ids) to build in the background; "all" set: every customer.
        self._pending: set[str] = set()
        self._pending_all = False
        self._wake = asyncio.Event()
        self._warm_task: asyncio.Task[None] | None = None
        # lower-cased customer id -> record; None until loaded (or after an inventory change).
        self._customers: dict[str, CustomerRecord] | None = None
        self._customers_generation = 0
        self._directories: dict[str, CustomerDirectory] = {}
        self._generations: defaultdict[str, int] = defaultdict(int)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._listen = PoolListener(
            {CONTACTS_CHANNEL: self._on_contacts, INVENTORY_CHANNEL: self._on_inventory},
            on_listening=self._listening,
            on_lost=self._lost,
        )
        self._closed = False

    # --- reads -----------------------------------------------------------------------------

    async def customers(self) -> dict[str, CustomerRecord]:
        """Every customer by lower-cased id."""
        snapshot = self._customers
        if snapshot is not None and self.live:
            return snapshot
        live, generation = self.live, self._customers_generation
        async with acquire(self._pool) as connection:
            records = await DirectoryRepository(connection).customers()
        snapshot = {record.id.lower(): record for record in records}
        if live and self.live and generation == self._customers_generation:
            self._customers = snapshot
        return snapshot

    async def customer(self, customer_id: str) -> CustomerRecord | None:
        return (await self.customers()).get(customer_id.lower())

    async def directory(self, customer_id: str) -> CustomerDirectory | None:
        """The customer's directory as of now; None if there is no such customer."""
        record = await self.customer(customer_id)
        if record is None:
            return None
        key = record.id.lower()
        cached = self._fresh(key, record)
        if cached is not None:
            return cached
        async with self._locks[key]:
            cached = self._fresh(key, record)
            if cached is not None:
                return cached
            live, generation = self.live, self._generations[key]
            async with acquire(self._pool) as connection:
                loaded = await DirectoryRepository(connection).load(record.id)
            if loaded is None:
                return None
            customer, contacts = loaded
            # Building the indexes of a few thousand contacts is CPU work: off the event loop.
            directory = await asyncio.to_thread(
                CustomerDirectory, customer, contacts, self._number_format
            )
            if live and self.live and generation == self._generations[key]:
                self._directories[key] = directory
            return directory

    def loaded(self) -> list[str]:
        """Lower-cased ids of the customers whose directory is in memory."""
        return sorted(self._directories)

    def peek(self, customer_id: str) -> CustomerDirectory | None:
        """The directory in memory, if any (never loads)."""
        return self._directories.get(customer_id.lower())

    def _fresh(self, key: str, record: CustomerRecord) -> CustomerDirectory | None:
        cached = self._directories.get(key)
        if cached is None or not self.live or cached.customer.settings != record.settings:
            return None
        return cached

    # --- invalidation ------------------------------------------------------------------------

    def drop_all(self) -> None:
        self._customers = None
        self._customers_generation += 1
        self._directories.clear()
        for key in list(self._generations):
            self._generations[key] += 1

    def _on_contacts(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        key = payload.strip().lower()
        self._directories.pop(key, None)
        self._generations[key] += 1
        # The customer records carry contact_current.version too.
        self._customers = None
        self._customers_generation += 1
        self._warm({key})

    def _on_inventory(self, _connection: object, _pid: int, _channel: str, _payload: str) -> None:
        # Directories stay; each is checked against the reloaded customer record before use.
        self._customers = None
        self._customers_generation += 1
        self._warm(None)

    # --- background builds -------------------------------------------------------------------

    def _warm(self, keys: set[str] | None) -> None:
        """Build these customers' directories (None: every customer's) in the background."""
        if not self._preload or self._closed:
            return
        if keys is None:
            self._pending_all = True
        else:
            self._pending |= keys
        self._wake.set()
        if self._warm_task is None:
            self._warm_task = asyncio.get_running_loop().create_task(self._warmer())

    async def _warmer(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._pending_all and self.live:
                    self._pending_all = False
                    self._pending |= set(await self.customers())
                while self._pending and self.live and not self._closed:
                    await self.directory(self._pending.pop())
            except (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                # Not fatal: searches load what they need; the next change tries again.
                log.warning("directory: background load failed: %s", error)
                self._pending.clear()

    # --- the listening connection (core/listen.py) ---------------------------------------

    @property
    def live(self) -> bool:
        return self._listen.live

    def start(self) -> None:
        if not self._closed:
            self._listen.start(self._pool)

    async def _listening(self, _connection: asyncpg.Connection) -> None:
        # Listening first, then forgetting: whatever committed before is read afresh.
        self.drop_all()
        self._warm(None)

    def _lost(self) -> None:
        log.warning("directory: lost the LISTEN connection; serving from PostgreSQL until back")
        self.drop_all()

    async def close(self) -> None:
        """Stop listening. The start-up task is awaited, never cancelled: cancelling it inside
        ``pool.acquire`` could lose the connection and make the pool's close wait forever."""
        self._closed = True
        self._wake.set()
        await self._listen.close()
        if self._warm_task is not None:
            await asyncio.wait([self._warm_task], timeout=15)
        self.drop_all()
