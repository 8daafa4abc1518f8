"""Which customers an event-sender account may write events and config backups for.

An account is bound to one customer, a list, or all of them (``pbxfront accounts bind``). A
device of customer A sending with an account bound only to A cannot write for B's devices: 403
and a security-log line (``core.deviceauth.DeviceAuth.authorize``). An event-sender account with
no binding at all (one made before bindings existed) is refused the same way, unless the
operator sets ``admin.unbound_senders_any_customer`` to keep the old behaviour for a while.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.core import errors
from services.core.db import transaction


@dataclass(frozen=True)
class SenderScope:
    """``every`` True: all customers; else exactly ``customers`` (empty: unbound)."""

    every: bool
    customers: frozenset[str]

    @property
    def bound(self) -> bool:
        return self.every or bool(self.customers)

    def allows(self, customer: str | None) -> bool:
        return self.every or (customer is not None and customer in self.customers)

    def describe(self) -> str:
        if self.every:
            return "every customer"
        return ", ".join(sorted(self.customers)) or "unbound"


class SenderScopeRepository:
    """The bindings (table ``sender_customers``). Binding is idempotent; an unknown account or
    customer is :class:`errors.NotFound` naming it, and nothing changes."""

    def __init__(self, db: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = db

    async def scope(self, account: str) -> SenderScope:
        rows = await self._db.fetch(
            "SELECT customer FROM sender_customers WHERE account = $1", account
        )
        customers = frozenset(row["customer"] for row in rows if row["customer"] is not None)
        return SenderScope(any(row["customer"] is None for row in rows), customers)

    async def bind(self, account: str, customers: list[str] | None) -> None:
        """Bind ``account`` to ``customers`` as well as its present ones (None: every one)."""
        async with transaction(self._db) as connection:
            if not await connection.fetchval("SELECT 1 FROM accounts WHERE name = $1", account):
                raise errors.NotFound(f"no account {account}")
            if customers is None:
                await connection.execute(
                    """INSERT INTO sender_customers (account, customer) VALUES ($1, NULL)
                       ON CONFLICT DO NOTHING""",
                    account,
                )
                return
            known = {
                row["id"]
                for row in await connection.fetch(
                    "SELECT id FROM customers WHERE id = ANY($1::text[])", customers
                )
            }
            missing = sorted(set(customers) - known)
            if missing:
                raise errors.NotFound(f"no customer {', '.join(missing)} in the inventory")
            await connection.execute(
                """INSERT INTO sender_customers (account, customer)
                   SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING""",
                account,
                sorted(set(customers)),
            )

    async def unbind(self, account: str, customers: list[str] | None) -> int:
        """Remove these bindings (None: all of the account's); how many were removed."""
        if customers is None:
            result = await self._db.execute(
                "DELETE FROM sender_customers WHERE account = $1", account
            )
        else:
            result = await self._db.execute(
                """DELETE FROM sender_customers
                   WHERE account = $1 AND customer = ANY($2::text[])""",
                account,
                customers,
            )
        return int(result.split()[-1])
