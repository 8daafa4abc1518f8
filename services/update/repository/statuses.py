"""Reads of the device status for operators: the status table, backup findings, firmware builds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.update.repository.base import Repository


@dataclass(frozen=True)
class DeviceStatus:
    mac: str
    hardware_id: str
    customer: str
    device_type: str
    device_class: str
    first_seen: datetime | None
    last_seen: datetime | None
    polls: int
    source_address: str | None
    proof: str | None
    phase: str | None
    version: str | None
    prot: str | None
    boot: str | None
    device_check: str | None
    hash_sent: str | None
    in_sync: bool
    restage_requested: bool
    staged_at: datetime | None
    last_error: str | None
    last_proven: datetime | None = None
    claimed_seen: datetime | None = None
    claimed_address: str | None = None
    firmware_attempts: int = 0
    firmware_stuck: str | None = None
    script_version: int | None = None

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("first_seen", "last_seen", "staged_at", "last_proven", "claimed_seen"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


class DeviceStatusRepository(Repository):
    """Inventory devices joined with their status (read only)."""

    async def statuses(
        self,
        *,
        customer: str | None = None,
        stale_after_seconds: float | None = None,
        mac: str | None = None,
        limit: int = 10000,
        offset: int = 0,
    ) -> list[DeviceStatus]:
        """Inventory devices joined with their status; ``stale_after_seconds`` keeps only
        devices not seen for longer (or never)."""
        rows = await self._db.fetch(
            """
            SELECT d.mac, d.hardware_id, d.customer, d.device_type, d.device_class,
                   CASE WHEN s.polls > 0 THEN s.first_seen END AS first_seen,
                   CASE WHEN s.polls > 0 THEN s.last_seen END AS last_seen,
                   COALESCE(s.polls, 0) AS polls, s.source_address,
                   s.proof, s.phase, s.version, s.prot, s.boot, s.device_check, s.hash_sent,
                   COALESCE(s.in_sync, false) AS in_sync,
                   COALESCE(s.restage_requested, false) AS restage_requested,
                   s.staged_at, s.last_error, s.last_proven, s.claimed_seen,
                   s.claimed_address, COALESCE(s.firmware_attempts, 0) AS firmware_attempts,
                   s.firmware_stuck, s.script_version
            FROM devices d LEFT JOIN device_status s ON s.mac = d.mac
            WHERE ($1::text IS NULL OR d.customer = $1)
              AND ($3::text IS NULL OR d.mac = $3)
              AND ($2::float8 IS NULL
                   OR s.last_seen IS NULL OR s.polls = 0
                   OR s.last_seen < now() - make_interval(secs => $2))
            ORDER BY d.customer, d.mac
            LIMIT $4 OFFSET $5
            """,
            customer,
            stale_after_seconds,
            mac,
            limit,
            offset,
        )
        return [DeviceStatus(**dict(row)) for row in rows]

    async def backup_findings(self) -> dict[str, list[str]]:
        """The codes of the Frontend plan's findings (``frontend check --backups --record``,
        table ``frontend_findings``) about each device's latest stored backup, by MAC; a device
        whose latest backup has none (or was not checked yet) is absent."""
        rows = await self._db.fetch(
            """SELECT f.mac, array_agg(f.code ORDER BY f.code) AS codes
               FROM frontend_findings f
               JOIN backup_devices b ON b.mac = f.mac AND b.latest_version = f.version_id
               GROUP BY f.mac"""
        )
        return {row["mac"]: list(row["codes"]) for row in rows}

    async def firmware_builds(self) -> list[tuple[str, str | None, int]]:
        """(device type, firmware build the device reported in PROT, devices) for every
        combination in the fleet; devices that never polled count under build None."""
        rows = await self._db.fetch(
            """SELECT d.device_type, s.prot, count(*) AS devices
               FROM devices d LEFT JOIN device_status s ON s.mac = d.mac
               GROUP BY d.device_type, s.prot ORDER BY d.device_type, s.prot NULLS LAST"""
        )
        return [(row["device_type"], row["prot"], int(row["devices"])) for row in rows]
