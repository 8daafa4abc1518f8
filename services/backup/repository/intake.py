"""The intake: a PUT stores a new version only when the configuration changed; an unchanged
one only moves counters (batched)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import asyncpg

from services.backup.diff import DiffStat
from services.backup.normalize import PreparedContent
from services.backup.repository.records import (
    InventoryDevice,
    LatestVersion,
    SeenUnchanged,
    StoreResult,
    Upload,
    insert_alert,
    read_content,
)

# (MAC, hardware id) as a request names the device; either may be None.
DeviceKey = tuple[str | None, str | None]


class ContentWork(Protocol):
    """The CPU work a new config needs; awaited so the caller can run it in a thread."""

    async def diffstat(self, previous: bytes, new: bytes) -> DiffStat: ...

    async def compress(self, content: bytes) -> bytes: ...


class IntakeRepository:
    """What a backup PUT reads and writes."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def inventory_devices(
        self, keys: Sequence[DeviceKey]
    ) -> dict[DeviceKey, tuple[InventoryDevice, LatestVersion | None]]:
        """The inventory devices with these (MAC, hardware id) keys (by MAC when given, else by
        hardware id; both given must agree), with their customer's anonymous-backup setting and
        their latest backup version (None before the first), in one read; nothing locked.
        Unknown keys are absent."""
        rows = await self._db.fetch(
            """
            SELECT k.key_mac, k.key_hardware_id, d.mac, d.hardware_id, d.device_type,
                   d.customer, c.allow_anonymous_backup, v.id AS latest_id, v.content_sha256,
                   v.normalized_sha256
            FROM unnest($1::text[], $2::text[]) AS k(key_mac, key_hardware_id)
            CROSS JOIN LATERAL (
                SELECT * FROM devices i
                WHERE i.mac = k.key_mac
                  AND (k.key_hardware_id IS NULL OR i.hardware_id = k.key_hardware_id)
                UNION ALL
                SELECT * FROM devices i
                WHERE k.key_mac IS NULL AND i.hardware_id = k.key_hardware_id
            ) d
            JOIN customers c ON c.id = d.customer
            LEFT JOIN backup_devices b ON b.mac = d.mac
            LEFT JOIN backup_versions v ON v.id = b.latest_version
            """,
            [mac for mac, _ in keys],
            [hardware_id for _, hardware_id in keys],
        )
        found: dict[DeviceKey, tuple[InventoryDevice, LatestVersion | None]] = {}
        for row in rows:
            device = InventoryDevice(
                row["mac"],
                row["hardware_id"],
                row["device_type"],
                row["customer"],
                row["allow_anonymous_backup"],
            )
            latest = None
            if row["latest_id"] is not None:
                latest = LatestVersion(
                    row["latest_id"],
                    bytes(row["content_sha256"]),
                    bytes(row["normalized_sha256"]),
                )
            found[(row["key_mac"], row["key_hardware_id"])] = (device, latest)
        return found

    async def record_unchanged(self, seen: Sequence[SeenUnchanged]) -> None:
        """Record uploads that equalled their device's latest version (seen at, put counts),
        for many devices in two statements."""
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
        async with self._db.transaction():
            await self._lock_device(device, now)
            latest = await self._latest_version(device.mac)
            if latest is not None and latest["normalized_sha256"] == prepared.normalized_sha256:
                await self._seen_latest(device.mac, latest["id"], now)
                return StoreResult(changed=False, version_id=latest["id"])
            stat: DiffStat | None = None
            if latest is not None:
                previous = await read_content(self._db, latest["content_sha256"])
                stat = await work.diffstat(previous, upload.content)
            compressed = await work.compress(upload.content)
            await self._store_content(prepared, compressed)
            version_id = await self._insert_version(upload, now, stat)
            await self._make_latest(device.mac, version_id, now)
            if latest is None or stat is None:
                return StoreResult(changed=True, version_id=version_id)
            alert_id = await self._changed_alert(device, now, version_id, latest["id"], stat)
            return StoreResult(True, version_id, latest["id"], stat, alert_id)

    async def _lock_device(self, device: InventoryDevice, now: datetime) -> None:
        """The device's ``backup_devices`` row, created at the first PUT and brought up to date
        with the inventory; locked until the caller's transaction ends."""
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

    async def _latest_version(self, mac: str) -> asyncpg.Record | None:
        """The device's latest version (id, normalized_sha256, content_sha256); None before the
        first."""
        row: asyncpg.Record | None = await self._db.fetchrow(
            """SELECT v.id, v.normalized_sha256, v.content_sha256
               FROM backup_devices d JOIN backup_versions v ON v.id = d.latest_version
               WHERE d.mac = $1""",
            mac,
        )
        return row

    async def _seen_latest(self, mac: str, version_id: int, now: datetime) -> None:
        """The latest version was uploaded again at ``now``: only the counters move."""
        await self._db.execute(
            """UPDATE backup_versions SET last_seen_at = $2,
                   unchanged_puts = unchanged_puts + 1 WHERE id = $1""",
            version_id,
            now,
        )
        await self._db.execute(
            """UPDATE backup_devices SET last_put_at = $2, last_unchanged_at = $2,
                   puts = puts + 1, stale_alerted_at = NULL WHERE mac = $1""",
            mac,
            now,
        )

    async def _store_content(self, prepared: PreparedContent, compressed: bytes) -> None:
        """The content by its SHA-256, once however many versions share it."""
        # DO UPDATE (not NOTHING) locks an existing content row until commit, so a concurrent
        # garbage collection cannot delete it under this version.
        await self._db.execute(
            """INSERT INTO backup_contents (sha256, size, compressed) VALUES ($1, $2, $3)
               ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256""",
            prepared.sha256,
            prepared.size,
            compressed,
        )

    async def _insert_version(self, upload: Upload, now: datetime, stat: DiffStat | None) -> int:
        """A new version of the upload's device; its id."""
        prepared = upload.prepared
        version_id: int = await self._db.fetchval(
            """
            INSERT INTO backup_versions (mac, content_sha256, normalized_sha256, received_at,
                last_seen_at, size, encoding, upload_name, proof, account, source_address,
                lines_added, lines_removed)
            VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            RETURNING id
            """,
            upload.device.mac,
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
        return version_id

    async def _make_latest(self, mac: str, version_id: int, now: datetime) -> None:
        """The new version is the device's latest; the PUT counts (a stale alert may come
        again)."""
        await self._db.execute(
            """UPDATE backup_devices SET latest_version = $2, last_put_at = $3,
                   puts = puts + 1, stale_alerted_at = NULL WHERE mac = $1""",
            mac,
            version_id,
            now,
        )

    async def _changed_alert(
        self,
        device: InventoryDevice,
        now: datetime,
        version_id: int,
        previous_version_id: int,
        stat: DiffStat,
    ) -> int:
        """The ``changed`` alert of a new version (NOTIFY on commit); its id."""
        return await insert_alert(
            self._db,
            "changed",
            device.mac,
            device.hardware_id,
            device.customer,
            now,
            f"config of {device.hardware_id} ({device.customer}) changed: version "
            f"{version_id}, {stat} lines",
            version_id=version_id,
            previous_version_id=previous_version_id,
            stat=stat,
        )
