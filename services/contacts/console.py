"""The contacts service's part of the operator console (composed by serve.py): plain values."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.contacts.repository import ContactsRepository
from services.core import errors


async def versions(pool: asyncpg.Pool, customer_id: str) -> list[dict[str, Any]]:
    """The customer's kept contacts versions, newest first, each with its upload's report
    (rows accepted and rejected, who uploaded, from where, how the file was read)."""
    async with pool.acquire() as connection:
        found = await ContactsRepository(connection).versions(customer_id)
    return [v.as_json() for v in found]


async def rollback(
    connection: asyncpg.Connection, customer_id: str, to: int
) -> tuple[int | None, tuple[int, str] | None]:
    """Make version ``to`` current again, in the caller's transaction (the console writes its
    audit row in the same one): (the version current before, None) when done, else
    (None, (404 or 409, why not)) and nothing changed."""
    try:
        async with connection.transaction():
            previous, _current = await ContactsRepository(connection).rollback(customer_id, to)
    except errors.NotFound as error:
        return None, (404, str(error))
    except errors.Conflict as error:
        return None, (409, str(error))
    return previous, None
