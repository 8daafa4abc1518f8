"""The log of hand-overs: which device was sent where, when, with what proof (table
``redirect_handovers``)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.redirect.repository.records import Handover


class HandoverRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def record_handovers(self, handovers: Sequence[Handover]) -> None:
        """Log hand-overs (written in batches by the device app, see core/batch.py)."""
        await self._db.executemany(
            """INSERT INTO redirect_handovers (mac, provider, at, source_address, proof, target)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            [(h.mac, h.provider, h.at, h.source_address, h.proof, h.target) for h in handovers],
        )

    async def handovers(self, mac: str, limit: int = 20) -> list[Handover]:
        rows = await self._db.fetch(
            """SELECT mac, provider, at, source_address, proof, target FROM redirect_handovers
               WHERE mac = $1 ORDER BY id DESC LIMIT $2""",
            mac,
            limit,
        )
        return [Handover(**dict(row)) for row in rows]
