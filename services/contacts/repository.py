"""All SQL of the contacts service: customers' numbering plans and upload secrets, versions,
entries, the current version per customer (migration 006_contacts.sql).

Making a version current (:meth:`ContactsRepository.store` and :meth:`rollback`) happens in one
transaction that also sends ``NOTIFY pbxfront_contacts`` with the customer id, so the directory
service reloads exactly when the change is committed. Both take a per-customer transaction-level
advisory lock, so concurrent uploads of one customer get consecutive version numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.contacts.domain import ENTRY_COLUMNS, Entry
from services.contacts.numbers import SHORT_DIGITS_VARIABLE
from services.core import errors

NOTIFY_CHANNEL = "pbxfront_contacts"


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    country_code: str
    area_code: str
    international_prefix: str
    national_prefix: str
    registration_password: str | None
    allow_anonymous_contacts: bool
    # The update variable contacts-short-digits (customer layer, else global), unparsed.
    short_digits_variable: str | None


@dataclass(frozen=True)
class VersionInfo:
    customer: str
    version: int
    created_at: datetime
    uploaded_by: str
    source_address: str | None
    source_sha256: bytes
    source_encoding: str
    accepted: int
    rejected: int
    current: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "uploaded_by": self.uploaded_by,
            "source_address": self.source_address,
            "source_sha256": self.source_sha256.hex(),
            "source_encoding": self.source_encoding,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "current": self.current,
        }


@dataclass(frozen=True)
class NewVersion:
    customer: str
    uploaded_by: str
    source_address: str | None
    source_sha256: bytes
    source_encoding: str
    rejected: int
    entries: list[Entry]


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(
        row["line"],
        row["surname"],
        row["given_name"],
        row["company"],
        row["business_phone"],
        row["business_e164"],
        row["mobile_phone"],
        row["mobile_e164"],
    )


class ContactsRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def customer(self, customer_id: str) -> Customer | None:
        row = await self._db.fetchrow(
            """SELECT c.id, c.name, c.country_code, c.area_code, c.international_prefix,
                      c.national_prefix, c.registration_password, c.allow_anonymous_contacts,
                      COALESCE(vc.value, vg.value) AS short_digits
               FROM customers c
               LEFT JOIN variables vc
                   ON vc.layer = 'customer' AND vc.scope = c.id AND vc.name = $2
               LEFT JOIN variables vg
                   ON vg.layer = 'global' AND vg.scope = '' AND vg.name = $2
               WHERE c.id = $1""",
            customer_id,
            SHORT_DIGITS_VARIABLE,
        )
        if row is None:
            return None
        return Customer(
            row["id"],
            row["name"],
            row["country_code"],
            row["area_code"],
            row["international_prefix"],
            row["national_prefix"],
            row["registration_password"],
            row["allow_anonymous_contacts"],
            row["short_digits"],
        )

    async def current_version(self, customer_id: str) -> int | None:
        version: int | None = await self._db.fetchval(
            "SELECT version FROM contact_current WHERE customer = $1", customer_id
        )
        return version

    async def entries(self, customer_id: str, version: int) -> list[Entry]:
        rows = await self._db.fetch(
            """SELECT line, surname, given_name, company, business_phone, business_e164,
                      mobile_phone, mobile_e164
               FROM contact_entries WHERE customer = $1 AND version = $2 ORDER BY line""",
            customer_id,
            version,
        )
        return [_entry(row) for row in rows]

    async def current_entries(self, customer_id: str) -> tuple[int | None, list[Entry]]:
        """(current version, its entries) in one snapshot; (None, []) before the first upload."""
        async with self._db.transaction(isolation="repeatable_read", readonly=True):
            version = await self.current_version(customer_id)
            if version is None:
                return None, []
            return version, await self.entries(customer_id, version)

    async def versions(self, customer_id: str) -> list[VersionInfo]:
        """Every kept version, newest first."""
        rows = await self._db.fetch(
            """SELECT v.*, (cur.version = v.version) IS TRUE AS current
               FROM contact_versions v
               LEFT JOIN contact_current cur ON cur.customer = v.customer
               WHERE v.customer = $1 ORDER BY v.version DESC""",
            customer_id,
        )
        return [
            VersionInfo(
                row["customer"],
                row["version"],
                row["created_at"],
                row["uploaded_by"],
                row["source_address"],
                bytes(row["source_sha256"]),
                row["source_encoding"],
                row["accepted"],
                row["rejected"],
                row["current"],
            )
            for row in rows
        ]

    @contextlib.asynccontextmanager
    async def _locked(self, customer_id: str) -> AsyncIterator[asyncpg.Connection]:
        async with self._db.transaction():
            await self._db.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('pbxfront_contacts:' || $1, 0))",
                customer_id,
            )
            yield self._db

    async def _make_current(self, customer_id: str, version: int) -> None:
        await self._db.execute(
            """INSERT INTO contact_current (customer, version) VALUES ($1, $2)
               ON CONFLICT (customer) DO UPDATE SET version = $2, changed_at = now()""",
            customer_id,
            version,
        )
        await self._db.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, customer_id)

    async def store(self, new: NewVersion, keep_previous: int) -> int:
        """Store ``new`` as the next version and make it current, in one transaction; then
        delete versions beyond the current one and the ``keep_previous`` newest others.
        Returns the version number."""
        async with self._locked(new.customer) as connection:
            version: int = await connection.fetchval(
                "SELECT COALESCE(max(version), 0) + 1 FROM contact_versions WHERE customer = $1",
                new.customer,
            )
            await connection.execute(
                """INSERT INTO contact_versions (customer, version, uploaded_by, source_address,
                       source_sha256, source_encoding, accepted, rejected)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                new.customer,
                version,
                new.uploaded_by,
                new.source_address,
                new.source_sha256,
                new.source_encoding,
                len(new.entries),
                new.rejected,
            )
            await connection.copy_records_to_table(
                "contact_entries",
                records=[entry.record(new.customer, version) for entry in new.entries],
                columns=ENTRY_COLUMNS,
            )
            await self._make_current(new.customer, version)
            await connection.execute(
                """DELETE FROM contact_versions WHERE customer = $1 AND version <> $2
                     AND version NOT IN (
                         SELECT version FROM contact_versions
                         WHERE customer = $1 AND version <> $2
                         ORDER BY version DESC LIMIT $3)""",
                new.customer,
                version,
                keep_previous,
            )
        return version

    async def rollback(self, customer_id: str, to: int | None = None) -> tuple[int, int]:
        """Make the version before the current one (or version ``to``) current again.
        Returns (previous current, new current). NotFound / Conflict when there is none."""
        async with self._locked(customer_id):
            current = await self.current_version(customer_id)
            if current is None:
                raise errors.NotFound(f"{customer_id} has no contacts")
            if to is None:
                target: int | None = await self._db.fetchval(
                    """SELECT max(version) FROM contact_versions
                       WHERE customer = $1 AND version < $2""",
                    customer_id,
                    current,
                )
                if target is None:
                    raise errors.Conflict(
                        f"{customer_id}: version {current} is the oldest kept version"
                    )
            else:
                exists = await self._db.fetchval(
                    "SELECT 1 FROM contact_versions WHERE customer = $1 AND version = $2",
                    customer_id,
                    to,
                )
                if exists is None:
                    raise errors.NotFound(f"{customer_id} has no version {to}")
                target = to
            await self._make_current(customer_id, target)
        return current, target
