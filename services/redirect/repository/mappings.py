"""The mappings (MAC -> provider, Frontend, URL), their history and transfer tokens, and what a
redirect poll looks up (tables in ``core/migrations/004_redirect.sql``).

Contracts:

- Ownership is enforced in the write itself: every upsert of a mapping carries the owner it
  expects (``… ON CONFLICT DO UPDATE … WHERE provider = expected``), so two providers racing for
  one MAC never overwrite each other; the loser gets ``owned_by_other_provider``.
- Every committed change of a mapping writes one ``redirect_history`` row in the same
  transaction; an unchanged registration writes nothing.
- ``provider=None`` on the mapping methods means "the operator" (CLI): any owner's mapping.
- Secrets: transfer tokens are stored as SHA-256 and returned once by
  :meth:`MappingRepository.issue_transfer_token`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

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
from services.redirect.repository.providers import require_provider
from services.redirect.repository.records import (
    HistoryEntry,
    MappingRecord,
    facts_of,
    mapping_of,
    stored_of,
    target_of,
)
from services.redirect.signing import new_transfer_token, token_digest

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


async def check_frontend(connection: asyncpg.Connection, frontend: str | None) -> None:
    if (
        frontend is not None
        and await InventoryRepository(connection).get_frontend(frontend) is None
    ):
        raise errors.Unprocessable(f"frontend: no Frontend {frontend} in the inventory")


async def _spend_token(
    connection: asyncpg.Connection, token: str, existing: StoredMapping, provider: str
) -> bool:
    """Whether ``token`` is a valid transfer token of the owner for ``provider``; spent if so."""
    return bool(
        await connection.fetchval(
            """DELETE FROM redirect_transfer_tokens
               WHERE token_sha256 = $1 AND mac = $2 AND issued_by = $3
                 AND expires_at > now()
                 AND (to_provider IS NULL OR to_provider = $4)
               RETURNING true""",
            token_digest(token),
            existing.mac,
            existing.provider,
            provider,
        )
    )


async def _write(
    connection: asyncpg.Connection,
    provider: str,
    wanted: MappingInput,
    actor: str,
    existing: StoredMapping | None,
    planned: Outcome,
) -> Outcome:
    """Write a planned registration with its history row; the outcome as committed (another
    writer may have created the mapping since it was read)."""
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
    outcome = planned
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
        await connection.execute("DELETE FROM redirect_transfer_tokens WHERE mac = $1", wanted.mac)
    await UnknownDeviceRepository(connection).forget(REDIRECT, [wanted.mac])
    return outcome


class MappingRepository:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

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
        return [target_of(row) for row in rows]

    async def get(self, mac: str, provider: str | None = None) -> MappingRecord | None:
        """The mapping of ``mac``; with ``provider``, only if that provider owns it (another
        provider's device and an unknown one look the same)."""
        row = await self._db.fetchrow(
            _SELECT_MAPPINGS + " WHERE m.mac = $1 AND ($2::text IS NULL OR m.provider = $2)",
            mac,
            provider,
        )
        return mapping_of(row) if row is not None else None

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
        return [mapping_of(row) for row in rows]

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
            await require_provider(connection, provider)
            await check_frontend(connection, wanted.frontend)
            row = await connection.fetchrow(
                "SELECT mac, provider, frontend, url, facts FROM redirect_mappings "
                "WHERE mac = $1 FOR UPDATE",
                wanted.mac,
            )
            existing = stored_of(row) if row is not None else None
            token_ok = False
            if existing is not None and existing.provider != provider and transfer_token:
                token_ok = await _spend_token(connection, transfer_token, existing, provider)
            outcome = plan_registration(existing, provider, wanted, transfer_allowed=token_ok)
            if outcome is not Outcome.UNCHANGED:
                outcome = await _write(connection, provider, wanted, actor, existing, outcome)
            stored = await connection.fetchrow(_SELECT_MAPPINGS + " WHERE m.mac = $1", wanted.mac)
        return outcome, mapping_of(stored)

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
            await check_frontend(connection, frontend)
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
                facts_of(row["facts"]),
                actor,
            )
            stored = await connection.fetchrow(_SELECT_MAPPINGS + " WHERE m.mac = $1", mac)
        return mapping_of(stored)

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
                facts_of(row["facts"]),
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
                await require_provider(connection, to_provider)
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
            HistoryEntry(**{**dict(row), "facts": facts_of(row["facts"]) if row["facts"] else None})
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
            await require_provider(connection, provider)
            frontends = {f.id for f in await InventoryRepository(connection).list_frontends()}
            existing = await _stored_mappings(connection, macs)
            results, writes = plan_import(rows, existing, provider, frontends)
            if not writes:
                return results
            inserted = await _write_mappings(connection, provider, writes)
            _settle(results, inserted)
            done = [w for w in writes if w.mac in inserted]
            await _write_history(connection, provider, actor, done, inserted)
            await UnknownDeviceRepository(connection).forget(
                REDIRECT, [w.mac for w in done if inserted[w.mac]]
            )
        return results


async def _stored_mappings(
    connection: asyncpg.Connection, macs: Sequence[str]
) -> dict[str, StoredMapping]:
    """The stored mappings of these MACs, whoever owns them (nothing locked)."""
    stored = await connection.fetch(
        "SELECT mac, provider, frontend, url, facts FROM redirect_mappings "
        "WHERE mac = ANY($1::text[])",
        macs,
    )
    return {r["mac"]: stored_of(r) for r in stored}


async def _write_mappings(
    connection: asyncpg.Connection, provider: str, writes: Sequence[MappingInput]
) -> dict[str, bool]:
    """Upsert the planned writes in one statement: MAC -> True (inserted) or False (updated).
    A MAC that another provider owns by now is left alone and absent."""
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
    return {r["mac"]: bool(r["inserted"]) for r in written}


async def _write_history(
    connection: asyncpg.Connection,
    provider: str,
    actor: str,
    done: Sequence[MappingInput],
    inserted: Mapping[str, bool],
) -> None:
    """One ``redirect_history`` row for each mapping written (``register`` or ``update``)."""
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


def _settle(results: Sequence[RowResult], inserted: Mapping[str, bool]) -> None:
    """The planned writes' results as committed: created or updated, or taken by another
    provider between the read and the write (not written)."""
    for result in results:
        if result.mac is None or result.result not in (Outcome.CREATED, Outcome.UPDATED):
            continue
        if result.mac not in inserted:
            result.result = Outcome.ERROR
            result.error = RowError.OWNED_BY_OTHER_PROVIDER
            result.message = str(owned_by_other_provider(result.mac))
        else:
            result.result = Outcome.CREATED if inserted[result.mac] else Outcome.UPDATED


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
