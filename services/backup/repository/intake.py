"""The intake: a PUT stores a new version only when the configuration changed; an unchanged
one only moves counters (batched)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import asyncpg

from services.backup.diff import DiffStat
from services.backup.repository.records import (
    InventoryDevice,
    SeenUnchanged,
    StoreResult,
    Upload,
    insert_alert,
    read_content,
)


class ContentWork(Protocol):
    """The CPU work a new config needs; awaited so the caller can run it in a thread."""

    async def diffstat(self, previous: bytes, new: bytes) -> DiffStat: ...

    async def compress(self, content: bytes) -> bytes: ...


# The common case in one statement: the upload equals the device's latest version (byte for
# byte: $7, or after normalisation: $2), so only the counters move. Locks the device row like the
# full path (concurrent uploads of one device stay in order); no row when the device is new or
# its config changed.
_SEEN_UNCHANGED = """
WITH latest AS (
    SELECT d.latest_version AS id FROM backup_devices d
    JOIN backup_versions v ON v.id = d.latest_version
    WHERE d.mac = $1 AND (v.content_sha256 = $7 OR v.normalized_sha256 = $2)
    FOR UPDATE OF d
), seen AS (
    UPDATE backup_versions v SET last_seen_at = $3, unchanged_puts = v.unchanged_puts + 1
    FROM latest WHERE v.id = latest.id
    RETURNING v.id
)
UPDATE backup_devices d SET hardware_id = $4, customer = $5, device_type = $6, last_put_at = $3,
    last_unchanged_at = $3, puts = d.puts + 1, stale_alerted_at = NULL
FROM seen WHERE d.mac = $1
RETURNING seen.id
"""


class IntakeRepository:
    """What a backup PUT reads and writes."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def inventory_device(
        self, mac: str | None, hardware_id: str | None
    ) -> InventoryDevice | None:
        """The inventory device with this MAC (else this hardware id) and its customer's
        anonymous-backup setting; None when the inventory has no such device. When both are
        given they must name the same device."""
        row = await self._db.fetchrow(
            """
            SELECT d.mac, d.hardware_id, d.device_type, d.customer, c.allow_anonymous_backup
            FROM devices d JOIN customers c ON c.id = d.customer
            WHERE CASE WHEN $1::text IS NOT NULL THEN d.mac = $1 ELSE d.hardware_id = $2 END
              AND ($2::text IS NULL OR d.hardware_id = $2)
            """,
            mac,
            hardware_id,
        )
        return InventoryDevice(**dict(row)) if row is not None else None

    async def seen_unchanged(
        self,
        device: InventoryDevice,
        now: datetime,
        *,
        content_sha256: bytes | None = None,
        normalized_sha256: bytes | None = None,
    ) -> int | None:
        """Record an upload that equals the device's latest version, byte for byte
        (``content_sha256``) or after normalisation; that version's id, or None (nothing
        written) when the upload differs or the device has none yet."""
        seen: int | None = await self._db.fetchval(
            _SEEN_UNCHANGED,
            device.mac,
            normalized_sha256,
            now,
            device.hardware_id,
            device.customer,
            device.device_type,
            content_sha256,
        )
        return seen

    async def latest_content(self, mac: str) -> tuple[int, bytes] | None:
        """(id, content SHA-256) of the device's latest version; a read, nothing locked."""
        row = await self._db.fetchrow(
            """SELECT v.id, v.content_sha256 FROM backup_devices d
               JOIN backup_versions v ON v.id = d.latest_version WHERE d.mac = $1""",
            mac,
        )
        return (row["id"], bytes(row["content_sha256"])) if row is not None else None

    async def record_unchanged(self, seen: Sequence[SeenUnchanged]) -> None:
        """What :meth:`seen_unchanged` records, for many devices in two statements."""
        await self._db.execute(
            """UPDATE backup_versions v SET last_seen_at = greatest(v.last_seen_at, s.at),
                   unchanged_puts = v.unchanged_puts + s.puts
               FROM unnest($1::bigint[], $2::timestamptz[], $3::int[]) AS s(id, at, puts)
               WHERE v.id = s.id""",
            [item.version_id for item in seen],
            [item.at for item in seen],
            [item.puts for item in seen],
        )
        await self._db.execute(
            """UPDATE backup_devices d SET hardware_id = s.hardware_id, customer = s.customer,
                   device_type = s.device_type, last_put_at = greatest(d.last_put_at, s.at),
                   last_unchanged_at = s.at, puts = d.puts + s.puts, stale_alerted_at = NULL
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                           $6::int[]) AS s(mac, hardware_id, customer, device_type, at, puts)
               WHERE d.mac = s.mac""",
            [item.device.mac for item in seen],
            [item.device.hardware_id for item in seen],
            [item.device.customer for item in seen],
            [item.device.device_type for item in seen],
            [item.at for item in seen],
            [item.puts for item in seen],
        )

    async def store_if_changed(
        self, upload: Upload, now: datetime, work: ContentWork
    ) -> StoreResult:
        """Store ``upload`` as a new version unless it equals the device's latest version after
        normalisation; then only record that the latest was seen unchanged at ``now``.

        One transaction that first locks the device's row: concurrent calls for one device run
        one after the other, so N identical uploads give exactly one version. A changed config
        also gets a ``changed`` alert with its diffstat (``NOTIFY pbxfront_backup_alert``, sent on
        commit). Nothing is visible before the commit; a failure leaves no trace.
        """
        device = upload.device
        prepared = upload.prepared
        seen = await self.seen_unchanged(device, now, normalized_sha256=prepared.normalized_sha256)
        if seen is not None:
            return StoreResult(changed=False, version_id=seen)
        async with self._db.transaction():
            await self._db.execute(
                """
                INSERT INTO backup_devices AS d
                    (mac, hardware_id, customer, device_type, first_put_at, last_put_at)
                VALUES ($1, $2, $3, $4, $5, $5)
                ON CONFLICT (mac) DO UPDATE SET hardware_id = EXCLUDED.hardware_id,
                    customer = EXCLUDED.customer, device_type = EXCLUDED.device_type
                """,
                device.mac,
                device.hardware_id,
                device.customer,
                device.device_type,
                now,
            )
            latest = await self._db.fetchrow(
                """SELECT v.id, v.normalized_sha256, v.content_sha256
                   FROM backup_devices d JOIN backup_versions v ON v.id = d.latest_version
                   WHERE d.mac = $1""",
                device.mac,
            )
            if latest is not None and latest["normalized_sha256"] == prepared.normalized_sha256:
                await self._db.execute(
                    """UPDATE backup_versions SET last_seen_at = $2,
                           unchanged_puts = unchanged_puts + 1 WHERE id = $1""",
                    latest["id"],
                    now,
                )
                await self._db.execute(
                    """UPDATE backup_devices SET last_put_at = $2, last_unchanged_at = $2,
                           puts = puts + 1, stale_alerted_at = NULL WHERE mac = $1""",
                    device.mac,
                    now,
                )
                return StoreResult(changed=False, version_id=latest["id"])
            stat: DiffStat | None = None
            if latest is not None:
                previous = await read_content(self._db, latest["content_sha256"])
                stat = await work.diffstat(previous, upload.content)
            compressed = await work.compress(upload.content)
            # DO UPDATE (not NOTHING) locks an existing content row until commit, so a concurrent
            # garbage collection cannot delete it under this version.
            await self._db.execute(
                """INSERT INTO backup_contents (sha256, size, compressed) VALUES ($1, $2, $3)
                   ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256""",
                prepared.sha256,
                prepared.size,
                compressed,
            )
            version_id: int = await self._db.fetchval(
                """
                INSERT INTO backup_versions (mac, content_sha256, normalized_sha256, received_at,
                    last_seen_at, size, encoding, upload_name, proof, account, source_address,
                    lines_added, lines_removed)
                VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                RETURNING id
                """,
                device.mac,
                prepared.sha256,
                prepared.normalized_sha256,
                now,
                prepared.size,
                prepared.encoding,
                upload.upload_name,
                upload.proof,
                upload.account,
                upload.source_address,
                stat.added if stat else None,
                stat.removed if stat else None,
            )
            await self._db.execute(
                """UPDATE backup_devices SET latest_version = $2, last_put_at = $3,
                       puts = puts + 1, stale_alerted_at = NULL WHERE mac = $1""",
                device.mac,
                version_id,
                now,
            )
            if latest is None or stat is None:
                return StoreResult(changed=True, version_id=version_id)
            alert_id = await insert_alert(
                self._db,
                "changed",
                device.mac,
                device.hardware_id,
                device.customer,
                now,
                f"config of {device.hardware_id} ({device.customer}) changed: version "
                f"{version_id}, {stat} lines",
                version_id=version_id,
                previous_version_id=latest["id"],
                stat=stat,
            )
            return StoreResult(True, version_id, latest["id"], stat, alert_id)
