"""SQL of the redirect service: providers and their API keys, nonces, mappings, transfer tokens,
history, hand-overs, unknown devices (tables in ``core/migrations/004_redirect.sql``).

Contracts:

- Ownership is enforced in the write itself: every upsert of a mapping carries the owner it
  expects (``… ON CONFLICT DO UPDATE … WHERE provider = expected``), so two providers racing for
  one MAC never overwrite each other; the loser gets ``owned_by_other_provider``.
- Every committed change of a mapping writes one ``redirect_history`` row in the same
  transaction; an unchanged registration writes nothing.
- ``provider=None`` on the mapping methods means "the operator" (CLI): any owner's mapping.
- Secrets: an API key's secret is returned only by :meth:`RedirectRepository.add_key` (to show
  once) and to the signature check (:meth:`RedirectRepository.api_key`); transfer tokens are
  stored as SHA-256 and returned once by :meth:`RedirectRepository.issue_transfer_token`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.core import audit, errors
from services.core.db import transaction
from services.core.inventory import InventoryRepository
from services.core.unknown import REDIRECT, UnknownDeviceRepository
from services.redirect.handover import (
    DeviceKey,
    DeviceTarget,
    ImportRow,
    MappingInput,
    Outcome,
    RowError,
    RowResult,
    StoredMapping,
    owned_by_other_provider,
    plan_import,
    plan_registration,
)
from services.redirect.signing import new_key_id, new_secret, new_transfer_token, token_digest


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    facts: Mapping[str, str]
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "facts": dict(self.facts),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class ApiKey:
    id: str
    provider: str
    secret: str = field(repr=False)
    scopes: tuple[str, ...]
    description: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """Never the secret."""
        return {
            "id": self.id,
            "provider": self.provider,
            "scopes": list(self.scopes),
            "description": self.description,
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at),
            "revoked_at": _iso(self.revoked_at),
        }


@dataclass(frozen=True)
class MappingRecord:
    mac: str
    provider: str
    frontend: str | None
    url: str | None
    facts: Mapping[str, str]
    created_at: datetime
    updated_at: datetime
    # The Frontend as the inventory has it now (None when it is not there).
    public_address: str | None
    frontend_index: int | None

    def stored(self) -> StoredMapping:
        return StoredMapping(self.mac, self.provider, self.frontend, self.url, self.facts)

    def as_json(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "provider": self.provider,
            "frontend": self.frontend,
            "url": self.url,
            "facts": dict(self.facts),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class HistoryEntry:
    mac: str
    at: datetime
    action: str
    provider: str
    previous_provider: str | None
    frontend: str | None
    url: str | None
    facts: Mapping[str, str] | None
    actor: str

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["at"] = _iso(self.at)
        data["facts"] = dict(self.facts) if self.facts is not None else None
        return data


@dataclass(frozen=True)
class Handover:
    mac: str
    provider: str
    at: datetime
    source_address: str | None
    proof: str
    target: str

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["at"] = _iso(self.at)
        return data


_SELECT_MAPPINGS = """
    SELECT m.mac, m.provider, m.frontend, m.url, m.facts, m.created_at, m.updated_at,
           f.public_address, f.sbc_index AS frontend_index
    FROM redirect_mappings m LEFT JOIN frontends f ON f.id = m.frontend
"""
_SELECT_TARGETS = """
    SELECT m.mac, m.provider, m.frontend, m.url, m.facts, p.facts AS provider_facts,
           f.public_address, f.sbc_index AS frontend_index
    FROM redirect_mappings m
    JOIN redirect_providers p ON p.id = m.provider
    LEFT JOIN frontends f ON f.id = m.frontend
"""
_UPSERT_MAPPING = """
    INSERT INTO redirect_mappings AS m (mac, provider, frontend, url, facts)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (mac) DO UPDATE SET
        provider = EXCLUDED.provider, frontend = EXCLUDED.frontend, url = EXCLUDED.url,
        facts = EXCLUDED.facts, updated_at = now()
    WHERE m.provider = $6
    RETURNING (xmax = 0) AS inserted
"""
_INSERT_HISTORY = """
    INSERT INTO redirect_history
        (mac, action, provider, previous_provider, frontend, url, facts, actor)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


def _facts(value: Any) -> dict[str, str]:
    if isinstance(value, str):  # a connection without the jsonb codec
        value = json.loads(value)
    return {str(k): str(v) for k, v in (value or {}).items()}


def _mapping(row: Mapping[str, Any]) -> MappingRecord:
    return MappingRecord(
        row["mac"],
        row["provider"],
        row["frontend"],
        row["url"],
        _facts(row["facts"]),
        row["created_at"],
        row["updated_at"],
        row["public_address"],
        row["frontend_index"],
    )


def _target(row: Mapping[str, Any]) -> DeviceTarget:
    return DeviceTarget(
        row["mac"],
        row["provider"],
        row["frontend"],
        row["url"],
        _facts(row["facts"]),
        _facts(row["provider_facts"]),
        row["public_address"],
        row["frontend_index"],
    )


def _api_key(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        row["id"],
        row["provider"],
        row["secret"],
        tuple(row["scopes"]),
        row["description"],
        row["created_at"],
        row["last_used_at"],
        row["revoked_at"],
    )


class RedirectRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    # --- providers ------------------------------------------------------------------------------

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
        return Provider(row["id"], row["name"], _facts(row["facts"]), row["created_at"])

    async def list_providers(self) -> list[Provider]:
        rows = await self._db.fetch(
            "SELECT id, name, facts, created_at FROM redirect_providers ORDER BY id"
        )
        return [Provider(r["id"], r["name"], _facts(r["facts"]), r["created_at"]) for r in rows]

    async def _require_provider(self, connection: asyncpg.Connection, provider: str) -> None:
        if not await connection.fetchval(
            "SELECT true FROM redirect_providers WHERE id = $1", provider
        ):
            raise errors.Invalid(f"provider: no provider {provider}")

    # --- API keys and nonces ---------------------------------------------------------------------

    async def add_key(
        self, provider: str, scopes: Sequence[str], description: str | None
    ) -> tuple[str, str]:
        """A new key for ``provider``: (key id, secret). The secret is not shown again."""
        key_id, secret = new_key_id(), new_secret()
        async with transaction(self._db) as connection:
            await self._require_provider(connection, provider)
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
        return _api_key(row) if row is not None else None

    async def list_keys(self, provider: str | None = None) -> list[ApiKey]:
        rows = await self._db.fetch(
            """SELECT * FROM redirect_api_keys WHERE $1::text IS NULL OR provider = $1
               ORDER BY provider, created_at, id""",
            provider,
        )
        return [_api_key(row) for row in rows]

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

    # --- the device side -------------------------------------------------------------------------

    async def targets(self, key: DeviceKey) -> list[DeviceTarget]:
        """Mappings that may be ``key``'s: by MAC, or by the MAC's last three bytes when only the
        hardware id is known (a handful at most; :func:`handover.choose_mapping` decides)."""
        if key.mac is not None:
            rows = await self._db.fetch(_SELECT_TARGETS + " WHERE m.mac = $1", key.mac)
        else:
            rows = await self._db.fetch(
                _SELECT_TARGETS + " WHERE right(m.mac, 6) = $1 ORDER BY m.mac LIMIT 16",
                key.suffix,
            )
        return [_target(row) for row in rows]

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

    # --- mappings --------------------------------------------------------------------------------

    async def get(self, mac: str, provider: str | None = None) -> MappingRecord | None:
        """The mapping of ``mac``; with ``provider``, only if that provider owns it (another
        provider's device and an unknown one look the same)."""
        row = await self._db.fetchrow(
            _SELECT_MAPPINGS + " WHERE m.mac = $1 AND ($2::text IS NULL OR m.provider = $2)",
            mac,
            provider,
        )
        return _mapping(row) if row is not None else None

    async def list_mappings(
        self,
        provider: str | None = None,
        frontend: str | None = None,
        *,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[MappingRecord]:
        rows = await self._db.fetch(
            _SELECT_MAPPINGS
            + """ WHERE ($1::text IS NULL OR m.provider = $1)
                    AND ($2::text IS NULL OR m.frontend = $2)
                  ORDER BY m.provider, m.mac LIMIT $3 OFFSET $4""",
            provider,
            frontend,
            limit,
            offset,
        )
        return [_mapping(row) for row in rows]

    async def _check_frontend(self, connection: asyncpg.Connection, frontend: str | None) -> None:
        if (
            frontend is not None
            and await InventoryRepository(connection).get_frontend(frontend) is None
        ):
            raise errors.Unprocessable(f"frontend: no Frontend {frontend} in the inventory")

    async def register(
        self,
        provider: str,
        wanted: MappingInput,
        actor: str,
        transfer_token: str | None = None,
    ) -> tuple[Outcome, MappingRecord]:
        """Create, update or (with a valid transfer token from the owner) take over a mapping.

        Conflict ``owned_by_other_provider`` when another provider owns the MAC and no valid
        token is given; Unprocessable for a Frontend the inventory lacks; Invalid for an unknown
        provider. A used token is spent; a transfer voids the device's other tokens.
        """
        async with transaction(self._db) as connection:
            await self._require_provider(connection, provider)
            await self._check_frontend(connection, wanted.frontend)
            row = await connection.fetchrow(
                "SELECT mac, provider, frontend, url, facts FROM redirect_mappings "
                "WHERE mac = $1 FOR UPDATE",
                wanted.mac,
            )
            existing = (
                StoredMapping(
                    row["mac"], row["provider"], row["frontend"], row["url"], _facts(row["facts"])
                )
                if row is not None
                else None
            )
            token_ok = False
            if existing is not None and existing.provider != provider and transfer_token:
                token_ok = bool(
                    await connection.fetchval(
                        """DELETE FROM redirect_transfer_tokens
                           WHERE token_sha256 = $1 AND mac = $2 AND issued_by = $3
                             AND expires_at > now()
                             AND (to_provider IS NULL OR to_provider = $4)
                           RETURNING true""",
                        token_digest(transfer_token),
                        wanted.mac,
                        existing.provider,
                        provider,
                    )
                )
            outcome = plan_registration(existing, provider, wanted, transfer_allowed=token_ok)
            if outcome is not Outcome.UNCHANGED:
                expected_owner = existing.provider if existing is not None else provider
                written = await connection.fetchrow(
                    _UPSERT_MAPPING,
                    wanted.mac,
                    provider,
                    wanted.frontend,
                    wanted.url,
                    dict(wanted.facts),
                    expected_owner,
                )
                if written is None:  # created by another provider since we looked
                    raise owned_by_other_provider(wanted.mac)
                if written["inserted"]:
                    outcome = Outcome.CREATED
                elif outcome is Outcome.CREATED:  # the same provider created it meanwhile
                    outcome = Outcome.UPDATED
                action = {
                    Outcome.CREATED: "register",
                    Outcome.UPDATED: "update",
                    Outcome.TRANSFERRED: "transfer",
                }[outcome]
                previous = existing.provider if existing is not None else None
                await connection.execute(
                    _INSERT_HISTORY,
                    wanted.mac,
                    action,
                    provider,
                    previous if outcome is Outcome.TRANSFERRED else None,
                    wanted.frontend,
                    wanted.url,
                    dict(wanted.facts),
                    actor,
                )
                if outcome is Outcome.TRANSFERRED:
                    await connection.execute(
                        "DELETE FROM redirect_transfer_tokens WHERE mac = $1", wanted.mac
                    )
                await UnknownDeviceRepository(connection).forget(REDIRECT, [wanted.mac])
            stored = await connection.fetchrow(_SELECT_MAPPINGS + " WHERE m.mac = $1", wanted.mac)
        return outcome, _mapping(stored)

    async def move(
        self,
        mac: str,
        provider: str | None,
        frontend: str | None,
        url: str | None,
        actor: str,
    ) -> MappingRecord | None:
        """Point an existing mapping elsewhere (facts kept); None if there is none (of
        ``provider``'s)."""
        async with transaction(self._db) as connection:
            await self._check_frontend(connection, frontend)
            row = await connection.fetchrow(
                """UPDATE redirect_mappings SET frontend = $3, url = $4, updated_at = now()
                   WHERE mac = $1 AND ($2::text IS NULL OR provider = $2)
                   RETURNING provider, facts""",
                mac,
                provider,
                frontend,
                url,
            )
            if row is None:
                return None
            await connection.execute(
                _INSERT_HISTORY,
                mac,
                "move",
                row["provider"],
                None,
                frontend,
                url,
                _facts(row["facts"]),
                actor,
            )
            stored = await connection.fetchrow(_SELECT_MAPPINGS + " WHERE m.mac = $1", mac)
        return _mapping(stored)

    async def deregister(self, mac: str, provider: str | None, actor: str) -> bool:
        """Remove a mapping (its transfer tokens go with it); False if there is none."""
        async with transaction(self._db) as connection:
            row = await connection.fetchrow(
                """DELETE FROM redirect_mappings
                   WHERE mac = $1 AND ($2::text IS NULL OR provider = $2)
                   RETURNING provider, frontend, url, facts""",
                mac,
                provider,
            )
            if row is None:
                return False
            await connection.execute(
                _INSERT_HISTORY,
                mac,
                "deregister",
                row["provider"],
                None,
                row["frontend"],
                row["url"],
                _facts(row["facts"]),
                actor,
            )
        return True

    async def issue_transfer_token(
        self, mac: str, provider: str | None, to_provider: str | None, lifetime: float
    ) -> tuple[str, datetime] | None:
        """A single-use token with which ``to_provider`` (any provider if None) may take the
        device over; None if there is no mapping (of ``provider``'s). Shown once."""
        token = new_transfer_token()
        async with transaction(self._db) as connection:
            if to_provider is not None:
                await self._require_provider(connection, to_provider)
            expires_at = await connection.fetchval(
                """INSERT INTO redirect_transfer_tokens
                       (token_sha256, mac, issued_by, to_provider, expires_at)
                   SELECT $1, mac, provider, $3, now() + make_interval(secs => $4)
                   FROM redirect_mappings WHERE mac = $2 AND ($5::text IS NULL OR provider = $5)
                   RETURNING expires_at""",
                token_digest(token),
                mac,
                to_provider,
                lifetime,
                provider,
            )
        if expires_at is None:
            return None
        return token, expires_at

    async def history(self, mac: str, provider: str | None = None) -> list[HistoryEntry]:
        """The mapping's changes, oldest first; with ``provider`` only those made while it owned
        the device (another provider's targets are not its business)."""
        rows = await self._db.fetch(
            """SELECT mac, at, action, provider, previous_provider, frontend, url, facts, actor
               FROM redirect_history WHERE mac = $1 AND ($2::text IS NULL OR provider = $2)
               ORDER BY id""",
            mac,
            provider,
        )
        return [
            HistoryEntry(**{**dict(row), "facts": _facts(row["facts"]) if row["facts"] else None})
            for row in rows
        ]

    async def import_mappings(
        self, provider: str, rows: Sequence[ImportRow], actor: str
    ) -> list[RowResult]:
        """Idempotent bulk upsert, one result per row (see :func:`handover.plan_import`).

        Set-based: one read of the stored mappings, one write, one history insert, in one
        transaction. A row another provider took between the read and the write is reported as
        ``owned_by_other_provider`` and not written.
        """
        macs = [row.mapping.mac for row in rows if row.mapping is not None]
        async with transaction(self._db) as connection:
            await self._require_provider(connection, provider)
            frontends = {f.id for f in await InventoryRepository(connection).list_frontends()}
            stored = await connection.fetch(
                "SELECT mac, provider, frontend, url, facts FROM redirect_mappings "
                "WHERE mac = ANY($1::text[])",
                macs,
            )
            existing = {
                r["mac"]: StoredMapping(
                    r["mac"], r["provider"], r["frontend"], r["url"], _facts(r["facts"])
                )
                for r in stored
            }
            results, writes = plan_import(rows, existing, provider, frontends)
            if not writes:
                return results
            written = await connection.fetch(
                """
                INSERT INTO redirect_mappings AS m (mac, provider, frontend, url, facts)
                SELECT w.mac, $1, w.frontend, w.url, w.facts::jsonb
                FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
                     AS w(mac, frontend, url, facts)
                ON CONFLICT (mac) DO UPDATE SET
                    frontend = EXCLUDED.frontend, url = EXCLUDED.url, facts = EXCLUDED.facts,
                    updated_at = now()
                WHERE m.provider = EXCLUDED.provider
                RETURNING m.mac, (xmax = 0) AS inserted
                """,
                provider,
                [w.mac for w in writes],
                [w.frontend for w in writes],
                [w.url for w in writes],
                [json.dumps(dict(w.facts)) for w in writes],
            )
            inserted = {r["mac"]: bool(r["inserted"]) for r in written}
            for result in results:
                if result.mac is None or result.result not in (Outcome.CREATED, Outcome.UPDATED):
                    continue
                if result.mac not in inserted:
                    conflict = owned_by_other_provider(result.mac)
                    result.result = Outcome.ERROR
                    result.error = RowError.OWNED_BY_OTHER_PROVIDER
                    result.message = str(conflict)
                else:
                    result.result = Outcome.CREATED if inserted[result.mac] else Outcome.UPDATED
            done = [w for w in writes if w.mac in inserted]
            await connection.execute(
                """
                INSERT INTO redirect_history (mac, action, provider, frontend, url, facts, actor)
                SELECT h.mac, h.action, $1, h.frontend, h.url, h.facts::jsonb, $2
                FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                     AS h(mac, action, frontend, url, facts)
                """,
                provider,
                actor,
                [w.mac for w in done],
                ["register" if inserted[w.mac] else "update" for w in done],
                [w.frontend for w in done],
                [w.url for w in done],
                [json.dumps(dict(w.facts)) for w in done],
            )
            await UnknownDeviceRepository(connection).forget(
                REDIRECT, [w.mac for w in done if inserted[w.mac]]
            )
        return results


async def audit_import(
    connection: asyncpg.Connection, actor: audit.Actor, provider: str, results: Sequence[RowResult]
) -> None:
    """One audit row for a bulk import, in the caller's transaction: counts and changed MACs."""
    changed = sorted(r.mac for r in results if r.mac and r.result.value in ("created", "updated"))
    counts = {
        outcome: sum(r.result.value == outcome for r in results)
        for outcome in ("created", "updated", "unchanged", "error")
    }
    if not changed:
        return
    await audit.record(
        connection,
        actor=actor,
        action="redirect.import",
        object_type="redirect-provider",
        object_id=provider,
        after={**counts, "changed": changed},
    )
