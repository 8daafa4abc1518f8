"""What a poll reads before it is answered (inventory version, pending restage) and the
restage an operator asks for."""

from __future__ import annotations

from services.update.repository.base import Repository


class RestageRepository(Repository):
    """Restaging: requested by an operator (NOTIFY ``pbxfront_restage``), pending until the
    device's next staging poll clears it."""

    async def clear_restage(self, mac: str, *, trusted: bool) -> None:
        """A staging poll answered: the restage is done now, not when the batched status write
        comes, so the device's next poll (seconds later in fast polling) is not sent back. An
        untrusted claimed poll of a device that has proven itself clears nothing."""
        await self._db.execute(
            """
            UPDATE device_status SET restage_requested = false, staged_at = now()
            WHERE mac = $1 AND restage_requested AND ($2 OR last_proven IS NULL)
            """,
            mac,
            trusted,
        )

    async def poll_state(self, mac: str | None, hardware_id: str | None) -> tuple[int, bool]:
        """(inventory version, restage pending for the device) in one round trip."""
        row = await self._db.fetchrow(
            """
            SELECT (SELECT version FROM inventory_state) AS version,
                   COALESCE((SELECT s.restage_requested
                             FROM device_status s JOIN devices d ON d.mac = s.mac
                             WHERE d.mac = $1 OR d.hardware_id = $2
                             LIMIT 1), false) AS restage
            """,
            mac,
            hardware_id,
        )
        assert row is not None
        return int(row["version"]), bool(row["restage"])

    async def pending_restages(self) -> set[str]:
        """MACs of the devices an operator asked to restage that have not staged since."""
        rows = await self._db.fetch("SELECT mac FROM device_status WHERE restage_requested")
        return {row["mac"] for row in rows}

    async def request_restage(self, mac: str) -> bool:
        """Mark a known device for staging again; False if the device is not in the inventory."""
        marked = await self._db.fetchval(
            """
            WITH marked AS (
                INSERT INTO device_status (mac, proof, phase, restage_requested, polls)
                SELECT mac, 'anonymous', 'update', true, 0 FROM devices WHERE mac = $1
                ON CONFLICT (mac) DO UPDATE SET restage_requested = true
                RETURNING mac
            )
            SELECT pg_notify('pbxfront_restage', mac) IS NOT NULL FROM marked
            """,
            mac,
        )
        return bool(marked)
