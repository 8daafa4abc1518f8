"""The providers that own mappings (table ``redirect_providers``)."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from services.core import errors
from services.redirect.repository.records import Provider, facts_of


async def require_provider(connection: asyncpg.Connection, provider: str) -> None:
    if not await connection.fetchval("SELECT true FROM redirect_providers WHERE id = $1", provider):
        raise errors.Invalid(f"provider: no provider {provider}")


class ProviderRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def upsert_provider(self, provider_id: str, name: str, facts: Mapping[str, str]) -> bool:
        """Create a provider or replace its name and facts; True if created."""
        inserted: bool = await self._db.fetchval(
            """
            INSERT INTO redirect_providers AS p (id, name, facts) VALUES ($1, $2, $3)
            ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, facts = EXCLUDED.facts,
                                           updated_at = now()
            RETURNING (xmax = 0)
            """,
            provider_id,
            name,
            dict(facts),
        )
        return inserted

    async def get_provider(self, provider_id: str) -> Provider | None:
        row = await self._db.fetchrow(
            "SELECT id, name, facts, created_at FROM redirect_providers WHERE id = $1",
            provider_id,
        )
        if row is None:
            return None
        return Provider(row["id"], row["name"], facts_of(row["facts"]), row["created_at"])

    async def list_providers(self) -> list[Provider]:
        rows = await self._db.fetch(
            "SELECT id, name, facts, created_at FROM redirect_providers ORDER BY id"
        )
        return [Provider(r["id"], r["name"], facts_of(r["facts"]), r["created_at"]) for r in rows]
