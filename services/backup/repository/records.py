"""What the backup repositories share: the records they return, the queries the archive and
the maintenance both read, and the alert row (with its NOTIFY) that intake and staleness raise.

Tables: ``migrations/005_backup.sql``. Contents are deduplicated by SHA-256 and zlib-compressed;
versions point at contents; ``backup_devices`` has one row per device, which every PUT locks, so
PUTs of one device are compared and stored one after the other and never produce duplicates.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.backup.diff import DiffStat
from services.backup.normalize import PreparedContent

ALERT_CHANNEL = "pbxfront_backup_alert"
# Retention and staleness run on one node at a time (session-level advisory lock).
MAINTENANCE_LOCK_ID = 0x70627862  # "pbxb"


@dataclass(frozen=True)
class InventoryDevice:
    mac: str
    hardware_id: str
    device_type: str
    customer: str
    allow_anonymous_backup: bool


@dataclass(frozen=True)
class LatestVersion:
    """What an upload is compared with: the device's latest version's id and hashes."""

    id: int
    content_sha256: bytes
    normalized_sha256: bytes


@dataclass(frozen=True)
class SeenUnchanged:
    """Uploads of one device that repeated its latest version, byte for byte or after
    normalisation (written in batches: services/backup/app.py)."""

    device: InventoryDevice
    version_id: int
    at: datetime
    puts: int = 1


@dataclass(frozen=True)
class Upload:
    """One PUT to store: who sent it and what."""

    device: InventoryDevice
    content: bytes
    prepared: PreparedContent
    upload_name: str
    # certificate | credentials | anonymous
    proof: str
    account: str | None
    source_address: str | None


@dataclass(frozen=True)
class StoreResult:
    changed: bool
    # The new version (changed) or the latest one that matched (unchanged).
    version_id: int
    previous_version_id: int | None = None
    diffstat: DiffStat | None = None
    alert_id: int | None = None


@dataclass(frozen=True)
class BackupDevice:
    mac: str
    hardware_id: str
    customer: str
    device_type: str
    first_put_at: datetime
    last_put_at: datetime
    last_unchanged_at: datetime | None
    last_changed_at: datetime | None
    puts: int
    versions: int
    latest_version: int | None
    stale_alerted_at: datetime | None

    def as_json(self, now: datetime) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["age_seconds"] = int((now - self.last_put_at).total_seconds())
        return data


@dataclass(frozen=True)
class Version:
    id: int
    mac: str
    content_sha256: bytes
    received_at: datetime
    last_seen_at: datetime
    unchanged_puts: int
    size: int
    encoding: str
    upload_name: str
    proof: str
    account: str | None
    source_address: str | None
    lines_added: int | None
    lines_removed: int | None

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["content_sha256"] = self.content_sha256.hex()
        data["received_at"] = self.received_at.isoformat()
        data["last_seen_at"] = self.last_seen_at.isoformat()
        return data


@dataclass(frozen=True)
class Alert:
    id: int
    kind: str
    mac: str
    hardware_id: str
    customer: str
    created_at: datetime
    version_id: int | None
    previous_version_id: int | None
    lines_added: int | None
    lines_removed: int | None
    last_put_at: datetime | None
    message: str

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


@dataclass(frozen=True)
class StaleDevice:
    mac: str
    hardware_id: str
    customer: str
    last_put_at: datetime


# Query texts are constants; only $n parameters carry values.
SELECT_VERSIONS = """SELECT v.id, v.mac, v.content_sha256, v.received_at, v.last_seen_at,
    v.unchanged_puts, v.size,
    v.encoding, v.upload_name, v.proof, v.account, v.source_address, v.lines_added,
    v.lines_removed
    FROM backup_versions v """

DEVICE_QUERY = """
    SELECT d.mac, d.hardware_id, d.customer, d.device_type, d.first_put_at, d.last_put_at,
           d.last_unchanged_at, v.received_at AS last_changed_at, d.puts,
           (SELECT count(*) FROM backup_versions x WHERE x.mac = d.mac) AS versions,
           d.latest_version, d.stale_alerted_at
    FROM backup_devices d LEFT JOIN backup_versions v ON v.id = d.latest_version
"""


async def insert_alert(
    db: asyncpg.Connection,
    kind: str,
    mac: str,
    hardware_id: str,
    customer: str,
    now: datetime,
    message: str,
    *,
    version_id: int | None = None,
    previous_version_id: int | None = None,
    stat: DiffStat | None = None,
    last_put_at: datetime | None = None,
) -> int:
    alert_id: int = await db.fetchval(
        """
        INSERT INTO backup_alerts (kind, mac, hardware_id, customer, created_at, version_id,
            previous_version_id, lines_added, lines_removed, last_put_at, message)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        RETURNING id
        """,
        kind,
        mac,
        hardware_id,
        customer,
        now,
        version_id,
        previous_version_id,
        stat.added if stat else None,
        stat.removed if stat else None,
        last_put_at,
        message,
    )
    # Delivered on commit only: the events service never hears of a rolled-back alert.
    await db.execute("SELECT pg_notify($1, $2)", ALERT_CHANNEL, str(alert_id))
    return alert_id


async def read_content(db: asyncpg.Connection, sha256: bytes) -> bytes:
    """The bytes of a stored content (decompressed). KeyError if there is none."""
    compressed = await db.fetchval(
        "SELECT compressed FROM backup_contents WHERE sha256 = $1", sha256
    )
    if compressed is None:
        raise KeyError(sha256.hex())
    content: bytes = zlib.decompress(compressed)
    return content
