"""SQL of the Frontend plan: the inventory snapshot and the latest stored config backups.

The backup tables belong to the backup service (``migrations/005_backup.sql``), ``device_status``
to the update service (``003_update.sql``); this reads them only (a service tells another
something through PostgreSQL, never an import).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.core.inventory import Inventory, load_inventory

# The backup service's alert channel: the events service imports new alerts when told.
BACKUP_ALERT_CHANNEL = "pbxfront_backup_alert"


@dataclass(frozen=True)
class NewFinding:
    mac: str
    hardware_id: str
    customer: str
    version_id: int
    code: str
    message: str


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


@dataclass(frozen=True)
class RecordedFinding:
    mac: str
    version_id: int
    code: str
    frontend: str
    message: str
    created_at: datetime
    alert_id: int | None

    def as_json(self) -> dict[str, object]:
        return {
            "mac": self.mac,
            "version_id": self.version_id,
            "code": self.code,
            "frontend": self.frontend,
            "message": self.message,
            "created_at": self.created_at.isoformat(),
            "alert_id": self.alert_id,
        }


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

    async def reported_builds(self, macs: Sequence[str]) -> dict[str, str | None]:
        """The firmware build (PROT) each of ``macs`` reported on its last poll, by MAC; a device
        that never polled is absent."""
        rows = await self._connection.fetch(
            "SELECT mac, prot FROM device_status WHERE mac = ANY($1::text[])", list(macs)
        )
        return {row["mac"]: row["prot"] for row in rows}

    async def record_findings(
        self, frontend: str, findings: Sequence[NewFinding], now: datetime
    ) -> list[NewFinding]:
        """Record each finding once per (MAC, backup version, code); the new ones also become
        ``drift`` backup alerts (so events, so syslog). Returns the new ones. One transaction;
        running it again with the same findings records and alerts nothing."""
        new: list[NewFinding] = []
        last_alert = 0
        async with self._connection.transaction():
            # Findings about versions the backup retention removed since.
            await self._connection.execute(
                """DELETE FROM frontend_findings f WHERE NOT EXISTS
                       (SELECT 1 FROM backup_versions v WHERE v.id = f.version_id)"""
            )
            for finding in findings:
                inserted = await self._connection.fetchval(
                    """INSERT INTO frontend_findings
                           (mac, version_id, code, frontend, message, created_at)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT DO NOTHING RETURNING true""",
                    finding.mac,
                    finding.version_id,
                    finding.code,
                    frontend,
                    finding.message,
                    now,
                )
                if not inserted:
                    continue
                alert_id = await self._connection.fetchval(
                    """INSERT INTO backup_alerts
                           (kind, mac, hardware_id, customer, created_at, version_id, message)
                       VALUES ('drift', $1, $2, $3, $4, $5, $6) RETURNING id""",
                    finding.mac,
                    finding.hardware_id,
                    finding.customer,
                    now,
                    finding.version_id,
                    finding.message,
                )
                await self._connection.execute(
                    """UPDATE frontend_findings SET alert_id = $1
                       WHERE mac = $2 AND version_id = $3 AND code = $4""",
                    alert_id,
                    finding.mac,
                    finding.version_id,
                    finding.code,
                )
                new.append(finding)
                last_alert = alert_id
            if new:
                # Sent on commit, like the backup service's own alerts.
                await self._connection.execute(
                    "SELECT pg_notify($1, $2)", BACKUP_ALERT_CHANNEL, str(last_alert)
                )
        return new

    async def findings(
        self, frontend: str | None = None, mac: str | None = None, limit: int = 100
    ) -> list[RecordedFinding]:
        """Recorded findings, newest first, optionally of one Frontend and/or one device."""
        rows = await self._connection.fetch(
            """SELECT mac, version_id, code, frontend, message, created_at, alert_id
               FROM frontend_findings
               WHERE ($1::text IS NULL OR frontend = $1) AND ($2::text IS NULL OR mac = $2)
               ORDER BY created_at DESC, version_id DESC, code LIMIT $3""",
            frontend,
            mac,
            limit,
        )
        return [RecordedFinding(**dict(row)) for row in rows]
