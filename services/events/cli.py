"""``pbxfront events list|tail|show|destinations|prune``: the event store from the command line.

``tail -f`` follows new events as they are committed (LISTEN ``pbxfront_events``, with a poll
as a fallback), so it works against any node of the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.core import errors
from services.core.commands import JSON, Bind, Commands, argument
from services.core.config import Settings
from services.core.identity import printable
from services.events.delivery import DeliveryRepository
from services.events.handlers import Filters, event_json, query_events
from services.events.repository import NOTIFY_CHANNEL, EventRepository
from services.events.retention import run_retention


def _filters(args: argparse.Namespace) -> Filters:
    try:
        return Filters.from_values(
            device=args.device,
            customer=args.customer,
            severity=args.severity,
            since=args.since,
            active=args.active,
            now=datetime.now(UTC),
        )
    except errors.Invalid as error:
        raise errors.UsageError(str(error)) from None


def _line(row: asyncpg.Record) -> str:
    """One event per line; device text made printable (no control characters reach the tty)."""
    when = row["received_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    device = row["device_hardware_id"] or row["device_mac"] or "-"
    state = ""
    if row["kind"] == "alarm-set":
        state = " ACTIVE" if row["active"] else " cleared"
        if row["repeats"]:
            state += f" x{row['repeats'] + 1}"
    text = row["text"] or ""
    if row["details"]:
        text = f"{text} ({row['details']})"
    flag = f" time:{row['time_flag']}" if row["time_flag"] else ""
    return (
        f"{row['id']:>6}  {when}  {device:<15}  {row['customer'] or '-':<12}  "
        f"{row['kind']:<11}  {row['severity'] or '-':<13}  {row['code'] or '-':<6}  "
        f"{printable(row['source'] or '-', 24):<10}  {printable(text, 300)}{state}{flag}"
    )


def _print(rows: list[asyncpg.Record], as_json: bool) -> None:
    for row in rows:
        if as_json:
            print(json.dumps(event_json(row), default=str, ensure_ascii=False), flush=True)
        else:
            print(_line(row), flush=True)


async def events_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    filters = _filters(args)
    async with pool.acquire() as connection:
        rows = await query_events(EventRepository(connection), filters, limit=args.limit)
    rows.reverse()  # oldest first on a terminal, like a log
    if not rows and not args.json:
        print("no events", file=sys.stderr)
    _print(rows, args.json)
    return 0


async def events_tail(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    filters = _filters(args)
    async with pool.acquire() as connection:
        repository = EventRepository(connection)
        wake = asyncio.Event()

        def notified(*_: object) -> None:
            wake.set()

        await connection.add_listener(NOTIFY_CHANNEL, notified)
        try:
            await _follow(args, filters, repository, wake)
        finally:
            await connection.remove_listener(NOTIFY_CHANNEL, notified)
    return 0


async def _follow(
    args: argparse.Namespace, filters: Filters, repository: EventRepository, wake: asyncio.Event
) -> None:
    last = await repository.newest_id()
    rows = await query_events(repository, filters, limit=args.lines)
    rows.reverse()
    _print(rows, args.json)
    while args.follow:
        wake.clear()
        rows = await query_events(repository, filters, after=last, limit=1000)
        _print(rows, args.json)
        last = max([last, *(row["id"] for row in rows)])
        if not rows:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 2.0)


async def events_show(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        repository = EventRepository(connection)
        if args.raw:
            raw = await repository.raw(args.id)
            if raw is None:
                raise errors.UsageError(f"no event {args.id}")
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            return 0
        rows = await repository.query(after=args.id - 1, limit=1, include_repeats=True)
    if not rows or rows[0]["id"] != args.id:
        raise errors.UsageError(f"no event {args.id}")
    print(json.dumps(event_json(rows[0]), default=str, ensure_ascii=False, indent=2))
    return 0


async def events_destinations(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    async with pool.acquire() as connection:
        cursors = await DeliveryRepository(connection).cursors()
    now = datetime.now(UTC)
    if args.json:
        data: list[dict[str, Any]] = [
            {
                "name": c.name,
                "url": c.url,
                "delivered_id": c.delivered_id,
                "backlog": c.backlog,
                "holder": c.holder,
                "last_error": c.last_error,
            }
            for c in cursors
        ]
        print(json.dumps(data, indent=2))
        return 0
    if not cursors:
        print("no destination has been used yet", file=sys.stderr)
    for c in cursors:
        age = (
            f"{(now - c.oldest_undelivered_at).total_seconds():.0f}s"
            if c.oldest_undelivered_at
            else "-"
        )
        print(
            f"{c.name}  delivered up to {c.delivered_id}  backlog {c.backlog}  oldest {age}  "
            f"holder {c.holder or '-'}  last error {printable(c.last_error or '-', 120)}"
        )
    return 0


async def events_prune(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    deleted = await run_retention(pool, settings, datetime.now(UTC), dry_run=args.dry_run)
    if deleted is None:
        print("another node is running retention now; nothing done")
        return 1
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {deleted} event(s)")
    return 0


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", metavar="DEVICE", help="MAC or hardware id")
    parser.add_argument("--customer", metavar="ID")
    parser.add_argument(
        "--severity", metavar="LEVEL", help="at least this severe: Critical, Major, Minor, ..."
    )
    parser.add_argument("--since", metavar="WHEN", help="30m, 2h, 7d or an ISO 8601 time")
    parser.add_argument("--active", action="store_true", help="only active alarms")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    events = Commands(commands, common, bind).group("events", "device alarms, events and logs")
    events.add(
        "list",
        events_list,
        "stored events, oldest first",
        _filter_arguments,
        argument("--limit", type=int, default=100, metavar="N", help="the newest N"),
    )
    events.add(
        "tail",
        events_tail,
        "the newest events; -f follows",
        _filter_arguments,
        argument("-f", "--follow", action="store_true", help="print new events as they come"),
        argument("-n", "--lines", type=int, default=10, metavar="N"),
    )
    events.add(
        "show",
        events_show,
        "one event, all fields",
        argument("id", type=int, metavar="ID"),
        argument("--raw", action="store_true", help="the body exactly as the device sent it"),
    )
    events.add("destinations", events_destinations, "syslog delivery cursors and backlog", JSON)
    events.add(
        "prune", events_prune, "apply retention now", argument("--dry-run", action="store_true")
    )
