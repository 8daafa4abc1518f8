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
from services.core import audit, errors
from services.core.commands import Bind
from services.core.config import Settings
from services.core.errors import UsageError

log = logging.getLogger(__name__)


def _customer(value: str) -> str:
    try:
        return check_customer_id(value)
    except errors.Invalid as error:
        raise UsageError(str(error)) from None


def _version(value: str | None) -> int | None:
    if value is None or value == "current":
        return None
    if not value.isdigit():
        raise UsageError(f"{value}: a version number (see `pbxfront contacts history`)")
    return int(value)


async def contacts_show(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        try:
            _, version, entries = await load_version(
                ContactsRepository(connection), _customer(args.customer), _version(args.version)
            )
        except errors.NotFound as error:
            raise UsageError(str(error)) from None
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
        print(json.dumps([v.as_json() for v in versions], indent=2))
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


async def contacts_rollback(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    customer_id = _customer(args.customer)
    async with pool.acquire() as connection, connection.transaction():
        repository = ContactsRepository(connection)
        if await repository.customer(customer_id) is None:
            raise UsageError(f"no customer {customer_id}")
        try:
            previous, current = await repository.rollback(customer_id, _version(args.to))
        except (errors.NotFound, errors.Conflict) as error:
            raise UsageError(str(error)) from None
        await audit.record(
            connection,
            actor=audit.cli_actor(),
            action="contacts.rollback",
            object_type="contacts",
            object_id=customer_id,
            before={"version": previous},
            after={"version": current},
        )
    log.info("contacts of %s rolled back from the CLI: %d -> %d", customer_id, previous, current)
    print(f"{customer_id}: version {current} is current again (was {previous})")
    return 0


async def contacts_ldif(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        try:
            customer, version, entries = await load_version(
                ContactsRepository(connection), _customer(args.customer), _version(args.version)
            )
        except errors.NotFound as error:
            raise UsageError(str(error)) from None
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
    contacts = commands.add_parser("contacts", help="customers' uploaded directories")
    actions = contacts.add_subparsers(dest="action", required=True)

    show = actions.add_parser(
        "show", parents=[common], help="a version as the seed's CSV (E.164 numbers)"
    )
    show.add_argument("customer", metavar="CUSTOMER-ID")
    show.add_argument("--version", metavar="N", help="default: the current one")
    show.add_argument("--json", action="store_true", help="entries with the original numbers")
    show.set_defaults(handler=bind(contacts_show))

    history = actions.add_parser("history", parents=[common], help="kept versions, newest first")
    history.add_argument("customer", metavar="CUSTOMER-ID")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=bind(contacts_history))

    rollback = actions.add_parser(
        "rollback", parents=[common], help="make the previous version current again"
    )
    rollback.add_argument("customer", metavar="CUSTOMER-ID")
    rollback.add_argument("--to", metavar="N", help="this version instead of the previous one")
    rollback.set_defaults(handler=bind(contacts_rollback))

    ldif = actions.add_parser(
        "ldif", parents=[common], help="LDIF under dc=<customer-id> for ldapadd"
    )
    ldif.add_argument("customer", metavar="CUSTOMER-ID")
    ldif.add_argument("--version", metavar="N", help="default: the current one")
    ldif.add_argument("-o", "--output", metavar="FILE", help="default: standard output")
    ldif.set_defaults(handler=bind(contacts_ldif))
