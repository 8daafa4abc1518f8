"""SQL of the update service: device status, unknown devices, restaging.

Every poll writes exactly one upsert; two polls of one device at once serialise on its row
(``ON CONFLICT … DO UPDATE``), so none is lost and no status is half-written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True)
class PollRecord:
    mac: str
    source_address: str | None
    proof: str
    phase: str
    version: str | None
    prot: str | None
    boot: str | None
    device_check: str | None
    cfg: str | None
    hash_sent: str | None
    in_sync: bool
    last_error: str | None = None


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

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("first_seen", "last_seen", "staged_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


@dataclass(frozen=True)
class UnknownDevice:
    key: str
    mac: str | None
    hardware_id: str | None
    device_type: str | None
    first_seen: datetime
    last_seen: datetime
    polls: int
    source_address: str | None
    proof: str
    version: str | None


class UpdateRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def record_poll(self, record: PollRecord) -> bool:
        """Upsert the device's status; returns whether a restage was pending before this poll.

        A staging poll clears a pending restage and stamps ``staged_at``.
        """
        row = await self._db.fetchrow(
            """
            WITH previous AS (
                SELECT restage_requested FROM device_status WHERE mac = $1 FOR UPDATE
            )
            INSERT INTO device_status AS s (
                mac, source_address, proof, phase, version, prot, boot, device_check, cfg,
                hash_sent, in_sync, last_error, staged_at
            ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                      CASE WHEN $4 = 'staging' THEN now() END)
            ON CONFLICT (mac) DO UPDATE SET
                last_seen = now(),
                polls = s.polls + 1,
                source_address = EXCLUDED.source_address,
                proof = EXCLUDED.proof,
                phase = EXCLUDED.phase,
                version = EXCLUDED.version,
                prot = EXCLUDED.prot,
                boot = EXCLUDED.boot,
                device_check = EXCLUDED.device_check,
                cfg = EXCLUDED.cfg,
                hash_sent = COALESCE(EXCLUDED.hash_sent, s.hash_sent),
                in_sync = EXCLUDED.in_sync,
                last_error = EXCLUDED.last_error,
                restage_requested = CASE WHEN EXCLUDED.phase = 'staging' THEN false
                                         ELSE s.restage_requested END,
                staged_at = CASE WHEN EXCLUDED.phase = 'staging' THEN now() ELSE s.staged_at END
            RETURNING (SELECT restage_requested FROM previous) AS was_pending
            """,
            record.mac,
            record.source_address,
            record.proof,
            record.phase,
            record.version,
            record.prot,
            record.boot,
            record.device_check,
            record.cfg,
            record.hash_sent,
            record.in_sync,
            record.last_error,
        )
        return bool(row and row["was_pending"])

    async def restage_pending(self, mac: str) -> bool:
        value = await self._db.fetchval(
            "SELECT restage_requested FROM device_status WHERE mac = $1", mac
        )
        return bool(value)

    async def request_restage(self, mac: str) -> bool:
        """Mark a known device for staging again; False if the device is not in the inventory."""
        status: str = await self._db.execute(
            """
            INSERT INTO device_status (mac, proof, phase, restage_requested, polls)
            SELECT mac, 'anonymous', 'update', true, 0 FROM devices WHERE mac = $1
            ON CONFLICT (mac) DO UPDATE SET restage_requested = true
            """,
            mac,
        )
        return not status.endswith(" 0")

    async def record_unknown(
        self,
        key: str,
        mac: str | None,
        hardware_id: str | None,
        device_type: str | None,
        source_address: str | None,
        proof: str,
        version: str | None,
    ) -> None:
        await self._db.execute(
            """
            INSERT INTO unknown_devices AS u
                (key, mac, hardware_id, device_type, source_address, proof, version)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (key) DO UPDATE SET
                last_seen = now(), polls = u.polls + 1,
                mac = COALESCE(EXCLUDED.mac, u.mac),
                hardware_id = COALESCE(EXCLUDED.hardware_id, u.hardware_id),
                device_type = COALESCE(EXCLUDED.device_type, u.device_type),
                source_address = EXCLUDED.source_address, proof = EXCLUDED.proof,
                version = EXCLUDED.version
            """,
            key,
            mac,
            hardware_id,
            device_type,
            source_address,
            proof,
            version,
        )

    async def list_unknown(self, limit: int = 1000) -> list[UnknownDevice]:
        rows = await self._db.fetch(
            """SELECT key, mac, hardware_id, device_type, first_seen, last_seen, polls,
                      source_address, proof, version
               FROM unknown_devices ORDER BY last_seen DESC LIMIT $1""",
            limit,
        )
        return [UnknownDevice(**dict(row)) for row in rows]

    async def forget_unknown(self, mac: str) -> None:
        await self._db.execute("DELETE FROM unknown_devices WHERE mac = $1 OR key = $1", mac)

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
                   s.staged_at, s.last_error
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
