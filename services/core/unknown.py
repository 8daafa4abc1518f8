"""Devices that asked but are not known: one table and one repository for every service that
records them (update: not in the inventory, for ``pbxfront devices adopt``; redirect: not
registered with a provider). Rows are per service, so each sighting keeps its own meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

UPDATE = "update"
REDIRECT = "redirect"
# protocol.md §1: `ver` is free text; stored capped.
_VERSION_LIMIT = 200


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

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for name in ("first_seen", "last_seen"):
            data[name] = data[name].isoformat()
        return data


class UnknownDeviceRepository:
    """``unknown_devices`` (migrations 003, 018). Every method is one statement."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def record(
        self,
        service: str,
        key: str,
        *,
        mac: str | None,
        hardware_id: str | None,
        device_type: str | None,
        source_address: str | None,
        proof: str,
        version: str | None,
        max_rows: int | None = None,
    ) -> None:
        """Upsert the sighting; with ``max_rows``, a new key past it first replaces the rows of
        that service unseen longest, so strangers cannot grow the table without bound."""
        await self._db.execute(
            """
            WITH room AS (
                DELETE FROM unknown_devices WHERE (service, key) IN (
                    SELECT service, key FROM unknown_devices
                    WHERE service = $1 AND $9::int IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM unknown_devices
                                      WHERE service = $1 AND key = $2)
                    ORDER BY last_seen
                    LIMIT GREATEST(0, (SELECT count(*) FROM unknown_devices WHERE service = $1)
                                      - COALESCE($9::int, 0) + 1))
            )
            INSERT INTO unknown_devices AS u
                (service, key, mac, hardware_id, device_type, source_address, proof, version)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (service, key) DO UPDATE SET
                last_seen = now(), polls = u.polls + 1,
                mac = COALESCE(EXCLUDED.mac, u.mac),
                hardware_id = COALESCE(EXCLUDED.hardware_id, u.hardware_id),
                device_type = COALESCE(EXCLUDED.device_type, u.device_type),
                source_address = EXCLUDED.source_address, proof = EXCLUDED.proof,
                version = EXCLUDED.version
            """,
            service,
            key,
            mac,
            hardware_id,
            device_type,
            source_address,
            proof,
            version[:_VERSION_LIMIT] if version else None,
            max_rows,
        )

    async def sightings(self, service: str, limit: int = 1000) -> list[UnknownDevice]:
        rows = await self._db.fetch(
            """SELECT key, mac, hardware_id, device_type, first_seen, last_seen, polls,
                      source_address, proof, version
               FROM unknown_devices WHERE service = $1 ORDER BY last_seen DESC LIMIT $2""",
            service,
            limit,
        )
        return [UnknownDevice(**dict(row)) for row in rows]

    async def find(self, service: str, mac: str) -> UnknownDevice | None:
        row = await self._db.fetchrow(
            """SELECT key, mac, hardware_id, device_type, first_seen, last_seen, polls,
                      source_address, proof, version
               FROM unknown_devices WHERE service = $1 AND (mac = $2 OR key = $2)
               ORDER BY last_seen DESC LIMIT 1""",
            service,
            mac,
        )
        return UnknownDevice(**dict(row)) if row is not None else None

    async def forget(self, service: str, macs: list[str]) -> None:
        """The devices became known (adopted, registered)."""
        await self._db.execute(
            """DELETE FROM unknown_devices
               WHERE service = $1 AND (mac = ANY($2::text[]) OR key = ANY($2::text[]))""",
            service,
            macs,
        )
