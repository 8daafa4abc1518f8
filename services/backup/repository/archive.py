"""The archive as operators and customers read it: devices, versions, contents, alerts."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.backup.repository.records import (
    DEVICE_QUERY,
    SELECT_VERSIONS,
    Alert,
    BackupDevice,
    Version,
    read_content,
)


class ArchiveRepository:
    """Reads of the archive."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def devices(
        self, *, customer: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[BackupDevice]:
        rows = await self._db.fetch(
            DEVICE_QUERY
            + """WHERE ($1::text IS NULL OR d.customer = $1)
                 ORDER BY d.customer, d.mac LIMIT $2 OFFSET $3""",
            customer,
            limit,
            offset,
        )
        return [BackupDevice(**dict(row)) for row in rows]

    async def device(self, mac: str | None, hardware_id: str | None = None) -> BackupDevice | None:
        """A device of the archive by MAC, else by hardware id."""
        row = await self._db.fetchrow(
            DEVICE_QUERY
            + "WHERE CASE WHEN $1::text IS NOT NULL THEN d.mac = $1 ELSE d.hardware_id = $2 END",
            mac,
            hardware_id,
        )
        return BackupDevice(**dict(row)) if row is not None else None

    async def customers(self) -> list[tuple[str, datetime]]:
        """Customers with backups and the time of their newest PUT."""
        rows = await self._db.fetch(
            """SELECT customer, max(last_put_at) AS last_put_at FROM backup_devices
               GROUP BY customer ORDER BY customer"""
        )
        return [(row["customer"], row["last_put_at"]) for row in rows]

    async def versions(
        self, mac: str, *, limit: int = 50, before: int | None = None
    ) -> list[Version]:
        """A device's versions, newest first; ``before`` (a version id) pages on."""
        rows = await self._db.fetch(
            SELECT_VERSIONS
            + """WHERE v.mac = $1 AND ($2::bigint IS NULL OR v.id < $2)
                 ORDER BY v.id DESC LIMIT $3""",
            mac,
            before,
            limit,
        )
        return [Version(**dict(row)) for row in rows]

    async def version(self, mac: str, version_id: int) -> Version | None:
        row = await self._db.fetchrow(
            SELECT_VERSIONS + "WHERE v.mac = $1 AND v.id = $2",
            mac,
            version_id,
        )
        return Version(**dict(row)) if row is not None else None

    async def version_at(self, mac: str, received_at: datetime) -> Version | None:
        row = await self._db.fetchrow(
            SELECT_VERSIONS + "WHERE v.mac = $1 AND v.received_at = $2 ORDER BY v.id DESC LIMIT 1",
            mac,
            received_at,
        )
        return Version(**dict(row)) if row is not None else None

    async def content(self, sha256: bytes) -> bytes:
        """The bytes of a stored content (decompressed). KeyError if there is none."""
        return await read_content(self._db, sha256)

    async def alerts(self, *, limit: int = 100, after: int | None = None) -> list[Alert]:
        rows = await self._db.fetch(
            """SELECT id, kind, mac, hardware_id, customer, created_at, version_id,
                      previous_version_id, lines_added, lines_removed, last_put_at, message
               FROM backup_alerts WHERE ($1::bigint IS NULL OR id > $1)
               ORDER BY id DESC LIMIT $2""",
            after,
            limit,
        )
        return [Alert(**dict(row)) for row in rows]

    async def recent_versions(self, limit: int = 50) -> list[tuple[str, str, Version]]:
        """The newest stored versions of any device: (hardware id, customer, version)."""
        rows = await self._db.fetch(
            SELECT_VERSIONS.replace(
                "SELECT ",
                "SELECT d.hardware_id AS device_hardware_id, d.customer AS device_customer, ",
                1,
            )
            + "JOIN backup_devices d ON d.mac = v.mac ORDER BY v.id DESC LIMIT $1",
            limit,
        )
        result: list[tuple[str, str, Version]] = []
        for row in rows:
            data = dict(row)
            hardware_id = data.pop("device_hardware_id")
            customer = data.pop("device_customer")
            result.append((hardware_id, customer, Version(**data)))
        return result

    async def stale_overview(self, older_than: datetime, limit: int = 200) -> list[BackupDevice]:
        """Archive devices whose last PUT is older than ``older_than`` (alerted or not), the
        longest silent first (the console's Backups page)."""
        rows = await self._db.fetch(
            DEVICE_QUERY + "WHERE d.last_put_at < $1 ORDER BY d.last_put_at LIMIT $2",
            older_than,
            limit,
        )
        return [BackupDevice(**dict(row)) for row in rows]
