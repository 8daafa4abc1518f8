"""``pbxfront contacts show|history|rollback|ldif <customer-id>``: the directory from the command
line. The CLI user has database access, i.e. the admin role."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncpg

from services.contacts.domain import render_csv, render_ldif
from services.contacts.handlers import check_customer_id, load_version
from services.contacts.repository import ContactsRepository
from services.core import errors
from services.core.commands import (
    JSON,
    Bind,
    Commands,
    argument,
    optional_number,
    print_json,
    print_table,
    record_audit,
    usage_errors,
)
from services.core.config import Settings
from services.core.errors import UsageError

log = logging.getLogger(__name__)


def _customer(value: str) -> str:
    try:
        return check_customer_id(value)
    except errors.Invalid as error:
        raise UsageError(str(error)) from None


def _version(value: str | None) -> int | None:
    return optional_number(value, "current", "a version number (see `pbxfront contacts history`)")


async def contacts_show(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        with usage_errors(errors.NotFound):
            _, version, entries = await load_version(
                ContactsRepository(connection), _customer(args.customer), _version(args.version)
            )
    if args.json:
        print(json.dumps({"version": version, "entries": [e.as_json() for e in entries]}, indent=2))
        return 0
    print(f"# {args.customer} version {version}: {len(entries)} contacts", file=sys.stderr)
    sys.stdout.write(render_csv(entries))
    return 0


async def contacts_history(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    customer_id = _customer(args.customer)
    async with pool.acquire() as connection:
        repository = ContactsRepository(connection)
        if await repository.customer(customer_id) is None:
            raise UsageError(f"no customer {customer_id}")
        versions = await repository.versions(customer_id)
    if args.json:
        print_json(versions)
        return 0
    if not versions:
        print(f"{customer_id} has no contacts yet")
        return 0
    rows: list[tuple[str, ...]] = [
        ("VERSION", "", "UPLOADED (UTC)", "BY", "ACCEPTED", "REJECTED", "ENCODING")
    ]
    for v in versions:
        rows.append(
            (
                str(v.version),
                "current" if v.current else "",
                v.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                v.uploaded_by,
                str(v.accepted),
                str(v.rejected),
                v.source_encoding,
            )
        )
    print_table(rows)
    return 0


async def contacts_rollback(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    customer_id = _customer(args.customer)
    async with pool.acquire() as connection, connection.transaction():
        repository = ContactsRepository(connection)
        if await repository.customer(customer_id) is None:
            raise UsageError(f"no customer {customer_id}")
        with usage_errors(errors.NotFound, errors.Conflict):
            previous, current = await repository.rollback(customer_id, _version(args.to))
        await record_audit(
            connection,
            "contacts.rollback",
            "contacts",
            customer_id,
            before={"version": previous},
            after={"version": current},
        )
    log.info("contacts of %s rolled back from the CLI: %d -> %d", customer_id, previous, current)
    print(f"{customer_id}: version {current} is current again (was {previous})")
    return 0


async def contacts_ldif(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        with usage_errors(errors.NotFound):
            customer, version, entries = await load_version(
                ContactsRepository(connection), _customer(args.customer), _version(args.version)
            )
    text = render_ldif(customer.id, customer.name, entries)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")
        print(
            f"wrote {len(entries)} contacts of version {version} to {args.output}", file=sys.stderr
        )
    else:
        sys.stdout.write(text)
    return 0


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    contacts = Commands(commands, common, bind).group("contacts", "customers' uploaded directories")
    customer = argument("customer", metavar="CUSTOMER-ID")
    version = argument("--version", metavar="N", help="default: the current one")
    contacts.add(
        "show",
        contacts_show,
        "a version as the seed's CSV (E.164 numbers)",
        customer,
        version,
        argument("--json", action="store_true", help="entries with the original numbers"),
    )
    contacts.add("history", contacts_history, "kept versions, newest first", customer, JSON)
    contacts.add(
        "rollback",
        contacts_rollback,
        "make the previous version current again",
        customer,
        argument("--to", metavar="N", help="this version instead of the previous one"),
    )
    contacts.add(
        "ldif",
        contacts_ldif,
        "LDIF under dc=<customer-id> for ldapadd",
        customer,
        version,
        argument("-o", "--output", metavar="FILE", help="default: standard output"),
    )
