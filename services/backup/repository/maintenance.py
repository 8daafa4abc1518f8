"""Retention, garbage collection, staleness and device moves, one node at a time (advisory
lock)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg

from services.backup.repository.records import (
    MAINTENANCE_LOCK_ID,
    SELECT_VERSIONS,
    StaleDevice,
    Version,
    insert_alert,
)
from services.backup.retention import POLICY_VARIABLES, VersionStamp
from services.core.inventory.model import Variable

_DELETE_VERSIONS_RETURNING = """DELETE FROM backup_versions v
    WHERE v.mac = $1 AND v.id = ANY($2::bigint[])
    RETURNING v.id, v.mac, v.content_sha256, v.received_at, v.last_seen_at,
    v.unchanged_puts, v.size,
    v.encoding, v.upload_name, v.proof, v.account, v.source_address, v.lines_added,
    v.lines_removed"""


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class MaintenanceRepository:
    """What the maintenance job (and a device replacement) changes."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

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
            query = SELECT_VERSIONS + "WHERE v.mac = $1 AND v.id = ANY($2::bigint[])"
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
            return await insert_alert(
                self._db,
                "stale",
                device.mac,
                device.hardware_id,
                device.customer,
                now,
                message,
                last_put_at=device.last_put_at,
            )
