"""API keys, their nonces and the expiry of both and of transfer tokens (tables
``redirect_api_keys``, ``redirect_nonces``, ``redirect_transfer_tokens``). A key's secret is
returned only by :meth:`ApiKeyRepository.add_key` (to show once) and to the signature check
(:meth:`ApiKeyRepository.api_key`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.core.db import transaction
from services.redirect.repository.providers import require_provider
from services.redirect.repository.records import ApiKey, api_key_of
from services.redirect.signing import new_key_id, new_secret


class ApiKeyRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def add_key(
        self, provider: str, scopes: Sequence[str], description: str | None
    ) -> tuple[str, str]:
        """A new key for ``provider``: (key id, secret). The secret is not shown again."""
        key_id, secret = new_key_id(), new_secret()
        async with transaction(self._db) as connection:
            await require_provider(connection, provider)
            await connection.execute(
                """INSERT INTO redirect_api_keys (id, provider, secret, scopes, description)
                   VALUES ($1, $2, $3, $4, $5)""",
                key_id,
                provider,
                secret,
                list(scopes),
                description,
            )
        return key_id, secret

    async def api_key(self, key_id: str) -> ApiKey | None:
        """A key that is not revoked (its provider's), with its secret, for the signature check."""
        row = await self._db.fetchrow(
            "SELECT * FROM redirect_api_keys WHERE id = $1 AND revoked_at IS NULL", key_id
        )
        return api_key_of(row) if row is not None else None

    async def list_keys(self, provider: str | None = None) -> list[ApiKey]:
        rows = await self._db.fetch(
            """SELECT * FROM redirect_api_keys WHERE $1::text IS NULL OR provider = $1
               ORDER BY provider, created_at, id""",
            provider,
        )
        return [api_key_of(row) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        status: str = await self._db.execute(
            "UPDATE redirect_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            key_id,
        )
        return status == "UPDATE 1"

    async def use_nonce(self, key_id: str, nonce: str, expires_at: datetime) -> bool:
        """Remember a nonce until ``expires_at``; False if the key used it before (a replay)."""
        async with transaction(self._db) as connection:
            inserted = await connection.fetchval(
                """INSERT INTO redirect_nonces (key_id, nonce, expires_at) VALUES ($1, $2, $3)
                   ON CONFLICT DO NOTHING RETURNING true""",
                key_id,
                nonce,
                expires_at,
            )
            if inserted:
                await connection.execute(
                    """UPDATE redirect_api_keys SET last_used_at = now() WHERE id = $1
                       AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')""",
                    key_id,
                )
        return bool(inserted)

    async def purge_expired(self) -> int:
        """Forget expired nonces and transfer tokens (safe on any number of nodes at once)."""
        nonces: str = await self._db.execute("DELETE FROM redirect_nonces WHERE expires_at < now()")
        tokens: str = await self._db.execute(
            "DELETE FROM redirect_transfer_tokens WHERE expires_at < now()"
        )
        return int(nonces.split()[-1]) + int(tokens.split()[-1])
