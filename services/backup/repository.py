"""SQL of the backup service: intake (store only on change), the archive, retention, alerts.

Tables: ``migrations/005_backup.sql``. Contents are deduplicated by SHA-256 and zlib-compressed;
versions point at contents; ``backup_devices`` has one row per device, which every PUT locks, so
PUTs of one device are compared and stored one after the other and never produce duplicates.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from services.backup.diff import DiffStat
from services.backup.normalize import PreparedContent
from services.backup.retention import POLICY_VARIABLES, VersionStamp
from services.core.inventory.model import Variable

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
class SeenUnchanged:
    """Uploads of one device that repeated its latest version byte for byte (written in
    batches: services/backup/app.py)."""

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
_SELECT_VERSIONS = """SELECT v.id, v.mac, v.content_sha256, v.received_at, v.last_seen_at,
    v.unchanged_puts, v.size,
    v.encoding, v.upload_name, v.proof, v.account, v.source_address, v.lines_added,
    v.lines_removed
    FROM backup_versions v """
_DELETE_VERSIONS_RETURNING = """DELETE FROM backup_versions v
    WHERE v.mac = $1 AND v.id = ANY($2::bigint[])
    RETURNING v.id, v.mac, v.content_sha256, v.received_at, v.last_seen_at,
    v.unchanged_puts, v.size,
    v.encoding, v.upload_name, v.proof, v.account, v.source_address, v.lines_added,
    v.lines_removed"""

_DEVICE_QUERY = """
    SELECT d.mac, d.hardware_id, d.customer, d.device_type, d.first_put_at, d.last_put_at,
           d.last_unchanged_at, v.received_at AS last_changed_at, d.puts,
           (SELECT count(*) FROM backup_versions x WHERE x.mac = d.mac) AS versions,
           d.latest_version, d.stale_alerted_at
    FROM backup_devices d LEFT JOIN backup_versions v ON v.id = d.latest_version
"""


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


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class BackupRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    # --- intake --------------------------------------------------------------------------------

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
                previous = await self.content(latest["content_sha256"])
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
            alert_id = await self._alert(
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

    async def _alert(
        self,
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
        alert_id: int = await self._db.fetchval(
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
        await self._db.execute("SELECT pg_notify($1, $2)", ALERT_CHANNEL, str(alert_id))
        return alert_id

    # --- the archive ---------------------------------------------------------------------------

    async def devices(
        self, *, customer: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[BackupDevice]:
        rows = await self._db.fetch(
            _DEVICE_QUERY
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
            _DEVICE_QUERY
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
            _SELECT_VERSIONS
            + """WHERE v.mac = $1 AND ($2::bigint IS NULL OR v.id < $2)
                 ORDER BY v.id DESC LIMIT $3""",
            mac,
            before,
            limit,
        )
        return [Version(**dict(row)) for row in rows]

    async def version(self, mac: str, version_id: int) -> Version | None:
        row = await self._db.fetchrow(
            _SELECT_VERSIONS + "WHERE v.mac = $1 AND v.id = $2",
            mac,
            version_id,
        )
        return Version(**dict(row)) if row is not None else None

    async def version_at(self, mac: str, received_at: datetime) -> Version | None:
        row = await self._db.fetchrow(
            _SELECT_VERSIONS + "WHERE v.mac = $1 AND v.received_at = $2 ORDER BY v.id DESC LIMIT 1",
            mac,
            received_at,
        )
        return Version(**dict(row)) if row is not None else None

    async def content(self, sha256: bytes) -> bytes:
        """The bytes of a stored content (decompressed). KeyError if there is none."""
        compressed = await self._db.fetchval(
            "SELECT compressed FROM backup_contents WHERE sha256 = $1", sha256
        )
        if compressed is None:
            raise KeyError(sha256.hex())
        content: bytes = zlib.decompress(compressed)
        return content

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

    # --- retention and staleness ---------------------------------------------------------------

    async def policy_variables(self) -> tuple[list[Variable], dict[str, str]]:
        """The backup policy variables of the layers a customer has (global, frontend,
        customer), and the customers with their Frontends, to resolve them per customer."""
        rows = await self._db.fetch(
            """SELECT layer, scope, name, value, secret FROM variables
               WHERE name = ANY($1::text[]) AND layer IN ('global', 'frontend', 'customer')""",
            list(POLICY_VARIABLES),
        )
        customers = await self._db.fetch("SELECT id, frontend FROM customers")
        return [Variable(**dict(row)) for row in rows], {
            row["id"]: row["frontend"] for row in customers
        }

    async def try_maintenance_lock(self) -> bool:
        """Take the cluster-wide maintenance lock (session level) if nobody holds it."""
        taken: bool = await self._db.fetchval(
            "SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_ID
        )
        return taken

    async def release_maintenance_lock(self) -> None:
        await self._db.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_ID)

    async def devices_with_versions(
        self, more_than: int, customer: str | None = None
    ) -> list[tuple[str, str]]:
        """(mac, customer) of devices with more than ``more_than`` versions."""
        rows = await self._db.fetch(
            """SELECT d.mac, d.customer FROM backup_devices d
               WHERE ($2::text IS NULL OR d.customer = $2)
                 AND (SELECT count(*) FROM backup_versions v WHERE v.mac = d.mac) > $1
               ORDER BY d.customer, d.mac""",
            more_than,
            customer,
        )
        return [(row["mac"], row["customer"]) for row in rows]

    async def move_device(
        self, old_mac: str, new_mac: str, *, hardware_id: str, device_type: str
    ) -> list[int]:
        """A replaced device's history (RMA): every version of ``old_mac`` becomes one of
        ``new_mac`` (ids, times and contents unchanged), merged with any ``new_mac`` already
        has; the latest by receive time is the one the next PUT of ``new_mac`` is compared
        with. Both rows are locked first, so a concurrent PUT waits. Run it inside the caller's
        transaction; the moved version ids, oldest first (empty: ``old_mac`` had none)."""
        async with self._db.transaction():
            rows = await self._db.fetch(
                "SELECT mac FROM backup_devices WHERE mac = ANY($1::text[]) ORDER BY mac "
                "FOR UPDATE",
                [old_mac, new_mac],
            )
            if old_mac not in {row["mac"] for row in rows}:
                return []
            await self._db.execute(
                """
                INSERT INTO backup_devices AS d (mac, hardware_id, customer, device_type,
                    first_put_at, last_put_at, last_unchanged_at, puts, stale_alerted_at)
                SELECT $2, $3, customer, $4, first_put_at, last_put_at, last_unchanged_at, puts,
                       stale_alerted_at
                FROM backup_devices WHERE mac = $1
                ON CONFLICT (mac) DO UPDATE SET
                    hardware_id = EXCLUDED.hardware_id, customer = EXCLUDED.customer,
                    device_type = EXCLUDED.device_type,
                    first_put_at = least(d.first_put_at, EXCLUDED.first_put_at),
                    last_put_at = greatest(d.last_put_at, EXCLUDED.last_put_at),
                    puts = d.puts + EXCLUDED.puts
                """,
                old_mac,
                new_mac,
                hardware_id,
                device_type,
            )
            moved = await self._db.fetch(
                "UPDATE backup_versions SET mac = $2 WHERE mac = $1 RETURNING id", old_mac, new_mac
            )
            await self._db.execute(
                """UPDATE backup_devices SET latest_version = (
                       SELECT id FROM backup_versions WHERE mac = $1
                       ORDER BY received_at DESC, id DESC LIMIT 1)
                   WHERE mac = $1""",
                new_mac,
            )
            await self._db.execute("DELETE FROM backup_devices WHERE mac = $1", old_mac)
        return sorted(row["id"] for row in moved)

    async def prune_device(
        self,
        mac: str,
        decide: Callable[[Sequence[VersionStamp]], Sequence[int]],
        *,
        dry_run: bool,
    ) -> list[Version]:
        """Delete the versions ``decide`` picks from the device's versions; return them.

        Locks the device's row (a PUT of that device waits) and never deletes its latest
        version, whatever ``decide`` says. ``dry_run`` only reports.
        """
        async with self._db.transaction():
            latest = await self._db.fetchval(
                "SELECT latest_version FROM backup_devices WHERE mac = $1 FOR UPDATE", mac
            )
            rows = await self._db.fetch(
                "SELECT id, received_at FROM backup_versions WHERE mac = $1", mac
            )
            stamps = [VersionStamp(row["id"], row["received_at"]) for row in rows]
            doomed = [i for i in decide(stamps) if i != latest]
            if not doomed:
                return []
            query = _SELECT_VERSIONS + "WHERE v.mac = $1 AND v.id = ANY($2::bigint[])"
            if not dry_run:
                query = _DELETE_VERSIONS_RETURNING
            deleted = await self._db.fetch(query, mac, doomed)
        return sorted((Version(**dict(row)) for row in deleted), key=lambda v: v.id)

    async def collect_garbage(self) -> int:
        """Delete contents no version refers to; 0 when a concurrent PUT got in the way (the
        next run collects them)."""
        try:
            async with self._db.transaction():
                status: str = await self._db.execute(
                    """DELETE FROM backup_contents c WHERE NOT EXISTS
                       (SELECT 1 FROM backup_versions v WHERE v.content_sha256 = c.sha256)"""
                )
        except asyncpg.ForeignKeyViolationError:
            return 0
        return _count(status)

    async def stale_devices(self, customer: str, older_than: datetime) -> list[StaleDevice]:
        rows = await self._db.fetch(
            """SELECT mac, hardware_id, customer, last_put_at FROM backup_devices
               WHERE customer = $1 AND last_put_at < $2 AND stale_alerted_at IS NULL
               ORDER BY mac""",
            customer,
            older_than,
        )
        return [StaleDevice(**dict(row)) for row in rows]

    async def stale_overview(self, older_than: datetime, limit: int = 200) -> list[BackupDevice]:
        """Archive devices whose last PUT is older than ``older_than`` (alerted or not), the
        longest silent first (the console's Backups page)."""
        rows = await self._db.fetch(
            _DEVICE_QUERY + "WHERE d.last_put_at < $1 ORDER BY d.last_put_at LIMIT $2",
            older_than,
            limit,
        )
        return [BackupDevice(**dict(row)) for row in rows]

    async def recent_versions(self, limit: int = 50) -> list[tuple[str, str, Version]]:
        """The newest stored versions of any device: (hardware id, customer, version)."""
        rows = await self._db.fetch(
            _SELECT_VERSIONS.replace(
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

    async def backup_customers(self) -> list[str]:
        rows = await self._db.fetch("SELECT DISTINCT customer FROM backup_devices ORDER BY 1")
        return [row["customer"] for row in rows]

    async def raise_stale(self, device: StaleDevice, now: datetime, message: str) -> int | None:
        """Mark the device alerted and add a ``stale`` alert; None if a PUT came meanwhile or
        another run alerted already."""
        async with self._db.transaction():
            marked = await self._db.fetchval(
                """UPDATE backup_devices SET stale_alerted_at = $3
                   WHERE mac = $1 AND last_put_at = $2 AND stale_alerted_at IS NULL
                   RETURNING mac""",
                device.mac,
                device.last_put_at,
                now,
            )
            if marked is None:
                return None
            return await self._alert(
                "stale",
                device.mac,
                device.hardware_id,
                device.customer,
                now,
                message,
                last_put_at=device.last_put_at,
            )
