"""``pbxfront inventory …`` and ``pbxfront audit``: the operator commands over the inventory
(``services.core.inventory.apply``) and the audit log (``services.core.audit``).

``inventory apply`` prints the plan first. Removals (only with ``--prune``) need a confirmation:
a ``y`` on a terminal, or ``--yes``; without a terminal and without ``--yes`` it refuses and
changes nothing. The confirmed plan is applied only if it is still the plan (another operator may
have applied in between).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from services.core import audit
from services.core.commands import JSON, Bind, Commands, argument
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.inventory import (
    InventoryError,
    archived_customers,
    load_inventory,
    purge_archived_customer,
    render_inventory,
    restore_customer,
)
from services.core.inventory.apply import apply_sources, read_sources, refusal


def _problems(error: InventoryError) -> int:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    return 2


def _ask(question: str) -> bool:
    """Blocking: a yes/no question on the terminal."""
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


async def inventory_apply(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    try:
        sources = await asyncio.to_thread(read_sources, Path(args.path))
    except InventoryError as error:
        return _problems(error)
    actor = audit.cli_actor()
    options: dict[str, Any] = {
        "actor": actor,
        "prune": args.prune,
        "purge": args.purge,
        "claim": args.claim,
        "force": args.force,
        "max_prune_share": settings.inventory.max_prune_share,
    }
    async with pool.acquire() as connection:
        try:
            plan = await apply_sources(connection, sources, dry_run=True, **options)
        except InventoryError as error:
            return _problems(error)
        if not plan.changes:
            print("no changes")
            return 0
        for line in plan.lines():
            print(line)
        print(plan.summary())
        too_large = refusal(plan)
        if args.dry_run:
            if too_large and not args.force:
                print(f"(apply would refuse: {too_large})")
            elif plan.removals and not args.yes:
                print("(apply would ask for confirmation of the removals, or take --yes)")
            print("(dry run: nothing changed)")
            return 0
        if too_large and not args.force:
            print(f"pbxfront: {too_large}", file=sys.stderr)
            return 2
        if plan.removals and not args.yes:
            if not sys.stdin.isatty():
                print(
                    f"pbxfront: refusing to remove {len(plan.removals)} object(s) without "
                    "confirmation: no terminal to ask on; check the plan above with --dry-run "
                    "and pass --yes; nothing was changed",
                    file=sys.stderr,
                )
                return 2
            question = (
                f"Remove {len(plan.removals)} object(s) ("
                + ("purged for good" if args.purge else "customers archived, restorable")
                + ")? [y/N] "
            )
            if not await asyncio.to_thread(_ask, question):
                print("nothing was changed")
                return 1
        try:
            applied = await apply_sources(connection, sources, expected=plan.changes, **options)
        except InventoryError as error:
            return _problems(error)
    print(f"applied: {applied.summary()}")
    return 0


async def inventory_export(
    args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool
) -> int:
    async with pool.acquire() as connection:
        inventory = await load_inventory(connection)
    text = render_inventory(inventory)
    if args.output and args.output != "-":
        await asyncio.to_thread(Path(args.output).write_text, text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


async def inventory_restore(
    args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool
) -> int:
    async with pool.acquire() as connection:
        try:
            archived = await restore_customer(connection, args.customer, actor=audit.cli_actor())
        except InventoryError as error:
            return _problems(error)
    contacts = (
        f", contacts version {archived.contacts_version}"
        if archived.contacts_version is not None
        else ""
    )
    print(
        f"customer {archived.customer.id} restored with {len(archived.devices)} device(s), "
        f"{len(archived.variables)} variable(s){contacts}"
    )
    return 0


async def inventory_archived(
    args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool
) -> int:
    async with pool.acquire() as connection:
        archived = await archived_customers(connection)
    if args.json:
        rows = [{"customer": item.customer.id, **item.summary()} for item in archived]
        print(json.dumps(rows, indent=2))
        return 0
    for item in archived:
        print(
            f"{item.customer.id}\t{item.archived_at:%Y-%m-%d %H:%M}\t{item.archived_by}\t"
            f"{len(item.devices)} device(s)"
        )
    return 0


async def inventory_purge(args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool) -> int:
    if not args.yes:
        raise UsageError("purging deletes contact history and backups for good: pass --yes")
    async with pool.acquire() as connection:
        purged = await purge_archived_customer(connection, args.customer, actor=audit.cli_actor())
    if not purged:
        raise UsageError(f"customer {args.customer} is not archived")
    print(f"customer {args.customer}: contact history and backups purged")
    return 0


def parse_since(text: str) -> datetime:
    """``2026-12-01``, ``2026-12-01T10:00:00+00:00`` or a duration back from now: ``90m``,
    ``12h``, ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since: {text!r} is neither an ISO date/time nor a duration like 12h or 7d"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def audit_list(args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool) -> int:
    if not 1 <= args.limit <= 10000:
        raise UsageError("--limit: must be 1..10000")
    since = parse_since(args.since) if args.since else None
    object_type, object_id = audit.parse_object(args.object) if args.object else (None, None)
    async with pool.acquire() as connection:
        rows = await audit.entries(
            connection,
            since=since,
            actor=args.actor,
            object_type=object_type,
            object_id=object_id,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps(audit.as_rows(rows), indent=2, ensure_ascii=False))
        return 0
    for entry in rows:
        fields = audit.changed_fields(
            entry.before if isinstance(entry.before, dict) else None,
            entry.after if isinstance(entry.after, dict) else None,
        )
        detail = f" ({', '.join(fields)})" if entry.before and entry.after and fields else ""
        print(f"{entry.at:%Y-%m-%d %H:%M:%S} {entry.summary()}{detail}")
    return 0


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    top = Commands(commands, common, bind)
    inventory = top.group("inventory", "frontends, customers, devices, variables")
    customer = argument("customer", metavar="CUSTOMER")
    inventory.add(
        "apply",
        inventory_apply,
        "add and update what FILE (or every *.toml of DIR) says; remove only with --prune",
        argument(
            "path",
            metavar="FILE|DIR",
            help="an inventory file, or a folder of them (one per customer)",
        ),
        argument("--dry-run", action="store_true", help="only print what apply would do"),
        argument(
            "--prune",
            action="store_true",
            help="also remove what the files' scope holds but the files lack",
        ),
        argument(
            "--purge",
            action="store_true",
            help="with --prune: delete removed customers' contacts and backups instead of "
            "archiving",
        ),
        argument("--yes", action="store_true", help="confirm removals without asking"),
        argument(
            "--force", action="store_true", help="allow a prune over inventory.max_prune_share"
        ),
        argument(
            "--claim",
            action="store_true",
            help="take over customers the files name that another source (api, a file) owns",
        ),
    )
    inventory.add(
        "export",
        inventory_export,
        "write the inventory as TOML",
        argument("--output", "-o", metavar="FILE", help="default: standard output"),
    )
    inventory.add(
        "restore", inventory_restore, "bring back an archived (removed) customer", customer
    )
    inventory.add("archived", inventory_archived, "list archived customers", JSON)
    inventory.add(
        "purge",
        inventory_purge,
        "delete an archived customer's contacts and backups",
        customer,
        argument("--yes", action="store_true", help="required: this cannot be undone"),
    )

    top.add(
        "audit",
        audit_list,
        "who changed what, when, from where",
        argument("--since", metavar="WHEN", help="ISO date/time or 90m, 12h, 7d"),
        argument("--actor", metavar="NAME", help="account, token owner or OS user"),
        argument("--object", metavar="TYPE[/ID]", help="e.g. customer/Kuenkel00001 or device"),
        argument("--limit", type=int, default=1000, help="at most this many rows"),
        JSON,
    )
