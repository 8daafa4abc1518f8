"""SQL of the forwarding: one delivery cursor per syslog destination, the per-destination lock
that lets one process of the cluster forward at a time, and what is pending after a cursor
(table ``event_destinations``; the event log itself is ``repository.py``'s)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.events.repository import FORWARD_LOCK_CLASS, OUTGOING_COLUMNS


@dataclass(frozen=True)
class Cursor:
    name: str
    url: str
    delivered_id: int
    delivered_total: int
    updated_at: datetime
    holder: str | None
    last_error: str | None
    last_error_at: datetime | None
    newest_id: int
    oldest_undelivered_at: datetime | None

    @property
    def backlog(self) -> int:
        return max(0, self.newest_id - self.delivered_id)


class DeliveryRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    @staticmethod
    def forward_lock_key(name: str) -> int:
        return zlib.crc32(name.encode("utf-8")) - 2**31

    async def try_forward_lock(self, name: str) -> bool:
        """Session-level: held as long as this connection lives (another node takes over when
        this one's connection dies)."""
        taken: bool = await self._db.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", FORWARD_LOCK_CLASS, self.forward_lock_key(name)
        )
        return taken

    async def ensure_cursor(self, name: str, url: str, *, from_end: bool, holder: str) -> int:
        """The destination's delivered id; a new destination starts at 0 or at the newest."""
        await self._db.execute(
            """INSERT INTO event_destinations (name, url, delivered_id, holder)
               VALUES ($1, $2, CASE WHEN $3 THEN (SELECT COALESCE(max(id), 0) FROM events)
                                    ELSE 0 END, $4)
               ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, holder = EXCLUDED.holder""",
            name,
            url,
            from_end,
            holder,
        )
        delivered: int = await self._db.fetchval(
            "SELECT delivered_id FROM event_destinations WHERE name = $1", name
        )
        return delivered

    async def pending(self, after: int, limit: int, include_repeats: bool) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._db.fetch(
            f"""SELECT {OUTGOING_COLUMNS} FROM events
                WHERE id > $1 AND ($3 OR repeat_of IS NULL) ORDER BY id LIMIT $2""",  # noqa: S608
            after,
            limit,
            include_repeats,
        )
        return rows

    async def advance(self, name: str, delivered_id: int, count: int) -> None:
        await self._db.execute(
            """UPDATE event_destinations
               SET delivered_id = $2, delivered_total = delivered_total + $3, updated_at = now(),
                   last_error = NULL
               WHERE name = $1 AND delivered_id < $2""",
            name,
            delivered_id,
            count,
        )

    async def record_error(self, name: str, message: str) -> None:
        await self._db.execute(
            """UPDATE event_destinations SET last_error = $2, last_error_at = now()
               WHERE name = $1""",
            name,
            message[:500],
        )

    async def oldest_after(self, after: int) -> datetime | None:
        moment: datetime | None = await self._db.fetchval(
            "SELECT received_at FROM events WHERE id > $1 ORDER BY id LIMIT 1", after
        )
        return moment

    async def cursors(self) -> list[Cursor]:
        rows = await self._db.fetch(
            """SELECT c.*, n.newest,
                      (SELECT received_at FROM events e WHERE e.id > c.delivered_id
                       ORDER BY e.id LIMIT 1) AS oldest
               FROM event_destinations c,
                    (SELECT COALESCE(max(id), 0) AS newest FROM events) n
               ORDER BY c.name"""
        )
        return [
            Cursor(
                row["name"],
                row["url"],
                row["delivered_id"],
                row["delivered_total"],
                row["updated_at"],
                row["holder"],
                row["last_error"],
                row["last_error_at"],
                row["newest"],
                row["oldest"],
            )
            for row in rows
        ]
