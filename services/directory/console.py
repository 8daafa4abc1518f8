"""The directory's part of the operator console (composed by serve.py): a test search as a
phone does it, answered from the same index the LDAP listener uses."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg

from services.core.config import Settings
from services.directory.filters import parse_filter
from services.directory.index import CustomerDirectory
from services.directory.repository import DirectoryRepository

# At most this many entries are shown; a phone's list is shorter still.
MAX_RESULTS = 50


def _escape(text: str) -> str:
    """RFC 4515 value escaping."""
    return "".join(f"\\{ord(c):02x}" if c in "\\*()\0" else c for c in text)


def phone_filter(text: str) -> str:
    """What an innovaphone phone sends: a number looks up the number attributes (reverse
    lookup of a caller), a name the name attributes by prefix."""
    compact = re.sub(r"[\s()/.-]", "", text)
    if re.fullmatch(r"\+?\d{2,20}", compact):
        value = _escape(compact)
        return f"(|(telephoneNumber={value})(mobile={value})(homePhone={value}))"
    value = _escape(text)
    return f"(|(cn={value}*)(sn={value}*)(givenName={value}*)(o={value}*))"


async def search(
    pool: asyncpg.Pool, settings: Settings, customer_id: str, text: str
) -> list[dict[str, Any]] | None:
    """The entries a phone of ``customer_id`` would get for ``text``; None for no customer."""
    async with pool.acquire() as connection:
        loaded = await DirectoryRepository(connection).load(customer_id)
    if loaded is None:
        return None
    customer, contacts = loaded
    directory = await asyncio.to_thread(
        CustomerDirectory, customer, contacts, settings.directory.number_format
    )
    node = parse_filter(phone_filter(text))
    results: list[dict[str, Any]] = []
    for entry in directory.search(node, include_base=False):
        results.append(
            {
                "dn": entry.dn,
                "attributes": [(shown, list(values)) for shown, _name, values in entry.attributes],
            }
        )
        if len(results) >= MAX_RESULTS:
            break
    return results
