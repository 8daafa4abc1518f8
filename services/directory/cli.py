"""``pbxfront directory search``: what a phone bound as a customer would find, from the shell.

Reads the customer's current contacts straight from PostgreSQL (no running server needed) and
applies the same filter matching, number variants and quirks as the LDAP listener.
"""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from services.core.commands import Bind, Commands, argument
from services.core.config import Settings
from services.core.errors import UsageError
from services.directory.filters import FilterSyntaxError, parse_filter
from services.directory.index import CustomerDirectory
from services.directory.repository import DirectoryRepository
from services.directory.server import search_directory, select


async def directory_search(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    try:
        node = parse_filter(args.filter)
    except FilterSyntaxError as error:
        raise UsageError(f"filter: {error}") from None
    async with pool.acquire() as connection:
        loaded = await DirectoryRepository(connection).load(args.customer)
    if loaded is None:
        raise UsageError(f"no customer {args.customer!r}")
    customer, contacts = loaded
    directory = CustomerDirectory(customer, contacts, settings.directory.number_format)
    requested = tuple(a.strip() for a in args.attributes.split(",") if a.strip())
    found = search_directory(directory, node, args.limit)
    for entry in found:
        print(f"dn: {entry.dn}")
        for name, values in select(entry, requested, False):
            for value in values:
                print(f"{name}: {value}")
        print()
    print(f"# {len(found)} entries (version {customer.version or '-'} of {customer.id})")
    return 0


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    directory = Commands(commands, common, bind).group(
        "directory", "the LDAP directory of customers' contacts"
    )
    directory.add(
        "search",
        directory_search,
        "what a phone bound as the customer finds for an LDAP filter",
        argument("--customer", required=True, metavar="ID"),
        argument("--attributes", default="*", metavar="LIST", help="comma-separated, default all"),
        argument("--limit", type=int, default=50, metavar="N"),
        argument("filter", metavar="FILTER", help="e.g. '(telephoneNumber=07031730090)'"),
    )
