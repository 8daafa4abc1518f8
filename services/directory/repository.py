"""The directory's SQL: customers (inventory), their directory variables, current contacts.

Read-only: the inventory owns customers and variables, the contacts service owns
contact_versions/contact_entries/contact_current (migration 006).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from services.core.numbering import NumberingPlan
from services.directory.index import Contact, CustomerRecord

# A variable of the customer layer wins over the global one (the update variables' layering,
# restricted to the two layers that can speak about a whole customer).
_CUSTOMERS = """
SELECT c.id, c.name, c.registration_password, c.country_code, c.area_code,
       c.international_prefix, c.national_prefix, cc.version,
       (SELECT v.value FROM variables v
         WHERE v.name = 'directory-number-format'
           AND ((v.layer = 'customer' AND v.scope = c.id) OR (v.layer = 'global' AND v.scope = ''))
         ORDER BY v.layer = 'customer' DESC LIMIT 1) AS number_format,
       (SELECT v.value FROM variables v
         WHERE v.name = 'directory-quirks'
           AND ((v.layer = 'customer' AND v.scope = c.id) OR (v.layer = 'global' AND v.scope = ''))
         ORDER BY v.layer = 'customer' DESC LIMIT 1) AS quirks
  FROM customers c
  LEFT JOIN contact_current cc ON cc.customer = c.id
"""


def _customer(row: Mapping[str, Any]) -> CustomerRecord:
    return CustomerRecord(
        id=row["id"],
        name=row["name"],
        registration_password=row["registration_password"],
        plan=NumberingPlan(
            row["country_code"],
            row["area_code"],
            row["international_prefix"],
            row["national_prefix"],
        ),
        number_format=row["number_format"] or "",
        quirks=row["quirks"] or "",
        version=row["version"],
    )


class DirectoryRepository:
    """Reads for the directory. Every method is one statement, except :meth:`load`, which reads
    a customer and its contacts in one snapshot so the two always belong together."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def customers(self) -> list[CustomerRecord]:
        rows = await self._connection.fetch(_CUSTOMERS + " ORDER BY c.id")
        return [_customer(row) for row in rows]

    async def customer(self, customer_id: str) -> CustomerRecord | None:
        """By id, case-insensitively (ids differ in more than case: customers_id_lower)."""
        row = await self._connection.fetchrow(
            _CUSTOMERS + " WHERE lower(c.id) = lower($1)", customer_id
        )
        return _customer(row) if row is not None else None

    async def current_version(self, customer_id: str) -> int | None:
        version: int | None = await self._connection.fetchval(
            "SELECT version FROM contact_current WHERE customer = $1", customer_id
        )
        return version

    async def load(self, customer_id: str) -> tuple[CustomerRecord, list[Contact]] | None:
        """The customer and the contacts of its current version, as of one snapshot."""
        async with self._connection.transaction(isolation="repeatable_read", readonly=True):
            customer = await self.customer(customer_id)
            if customer is None:
                return None
            if customer.version is None:
                return customer, []
            rows = await self._connection.fetch(
                """SELECT line, surname, given_name, company, business_e164, mobile_e164
                     FROM contact_entries WHERE customer = $1 AND version = $2 ORDER BY line""",
                customer.id,
                customer.version,
            )
        return customer, [
            Contact(
                row["line"],
                row["surname"],
                row["given_name"],
                row["company"],
                row["business_e164"],
                row["mobile_e164"],
            )
            for row in rows
        ]
