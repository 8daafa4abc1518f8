"""SQL of the Frontend plan: the inventory snapshot and the latest stored config backups.

The backup tables belong to the backup service (``migrations/005_backup.sql``); this reads them
only (a service tells another something through PostgreSQL, never an import).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.core.inventory import Inventory, load_inventory


@dataclass(frozen=True)
class StoredBackup:
    mac: str
    hardware_id: str
    version_id: int
    received_at: datetime
    encoding: str  # utf-8 | other | binary (as the backup service classified it)
    content: bytes


_LATEST = """
SELECT d.mac, d.hardware_id, v.id, v.received_at, v.encoding, c.compressed
FROM backup_devices d
JOIN backup_versions v ON v.id = d.latest_version
JOIN backup_contents c ON c.sha256 = v.content_sha256
WHERE d.mac = ANY($1::text[])
"""


class FrontendRepository:
    """Reads for the plan. Contract: no writes; one consistent inventory snapshot per call."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def inventory(self) -> Inventory:
        return await load_inventory(self._connection)

    async def latest_backups(self, macs: Sequence[str]) -> dict[str, StoredBackup]:
        """The newest stored backup of each of ``macs`` that has one, by MAC."""
        rows = await self._connection.fetch(_LATEST, list(macs))
        return {
            row["mac"]: StoredBackup(
                row["mac"],
                row["hardware_id"],
                row["id"],
                row["received_at"],
                row["encoding"],
                zlib.decompress(row["compressed"]),
            )
            for row in rows
        }
