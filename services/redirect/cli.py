"""``pbxfront redirect …``: the redirect service's operator commands.

The operator acts for a provider (``--provider``, default ``local``, the single-provider
installation): the ownership rules of the provider API apply to ``register`` and ``import``;
``move``, ``deregister``, ``show`` and ``transfer-token`` work on any provider's device. Secrets
never come from argv: a transfer token is read from a file (``-``: standard input), and an API
key's secret is printed once by ``keys add``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from services.core import audit
from services.core.commands import Bind
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.unknown import REDIRECT, UnknownDeviceRepository
from services.redirect.handover import (
    check_frontend_id,
    check_mac,
    check_mapping,
    check_provider_id,
    check_url,
    clean_text,
    parse_fact_assignments,
    parse_import,
    target_url,
)
from services.redirect.repository import (
    ApiKeyRepository,
    HandoverRepository,
    MappingRecord,
    MappingRepository,
    ProviderRepository,
    audit_import,
)
from services.redirect.signing import check_scopes

ACTOR = "cli"


def _target(record: MappingRecord, settings: Settings) -> str:
    target = target_url(
        record.url, record.frontend, record.public_address, record.frontend_index, settings.redirect
    )
    return target or f"(nowhere: no Frontend {record.frontend} in the inventory)"


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _read_token(file: str) -> str:
    try:
        text = sys.stdin.readline() if file == "-" else Path(file).read_text("utf-8")
    except OSError as error:
        raise UsageError(f"{file}: {error.strerror}") from None
    token = text.strip()
    if not token:
        raise UsageError(f"{file}: no transfer token in it")
    return token


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


# --- mappings ------------------------------------------------------------------------------------


async def _audit(
    connection: asyncpg.Connection, action: str, mac: str, after: dict[str, Any] | None
) -> None:
    await audit.record(
        connection,
        actor=audit.cli_actor(),
        action=action,
        object_type="redirect-mapping",
        object_id=mac,
        after=after,
    )


async def register_device(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    wanted = check_mapping(args.mac, args.frontend, args.url, parse_fact_assignments(args.fact))
    provider = check_provider_id(args.provider)
    token = _read_token(args.transfer_token_file) if args.transfer_token_file else None
    async with pool.acquire() as connection, connection.transaction():
        outcome, record = await MappingRepository(connection).register(
            provider, wanted, ACTOR, token
        )
        if outcome.value != "unchanged":
            await _audit(connection, f"redirect.{outcome.value}", record.mac, record.as_json())
    print(f"{record.mac}: {outcome.value} for provider {provider} -> {_target(record, settings)}")
    return 0


async def move_device(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    mac = check_mac(args.mac)
    frontend = check_frontend_id(args.frontend) if args.frontend else None
    url = check_url(args.url) if args.url else None
    async with pool.acquire() as connection, connection.transaction():
        record = await MappingRepository(connection).move(mac, None, frontend, url, ACTOR)
        if record is not None:
            await _audit(connection, "redirect.move", mac, record.as_json())
    if record is None:
        raise UsageError(f"no device {mac} is registered")
    print(f"{mac}: moved -> {_target(record, settings)}")
    return 0


async def deregister_device(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    mac = check_mac(args.mac)
    async with pool.acquire() as connection, connection.transaction():
        deregistered = await MappingRepository(connection).deregister(mac, None, ACTOR)
        if deregistered:
            await _audit(connection, "redirect.deregister", mac, None)
    if not deregistered:
        raise UsageError(f"no device {mac} is registered")
    print(f"{mac}: deregistered")
    return 0


async def show_device(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    mac = check_mac(args.mac)
    mappings = MappingRepository(pool)
    record = await mappings.get(mac)
    history = await mappings.history(mac)
    handovers = await HandoverRepository(pool).handovers(mac)
    if record is None and not history:
        raise UsageError(f"no device {mac} is registered and none ever was")
    if args.json:
        data: dict[str, Any] = {
            "mapping": None,
            "history": [h.as_json() for h in history],
            "handovers": [h.as_json() for h in handovers],
        }
        if record is not None:
            data["mapping"] = {**record.as_json(), "target": _target(record, settings)}
        print(json.dumps(data, indent=2))
        return 0
    if record is None:
        print(f"{mac}: not registered")
    else:
        print(f"{mac}: provider {record.provider}")
        print(f"  frontend  {record.frontend or '-'}")
        print(f"  url       {record.url or '-'}")
        print(f"  target    {_target(record, settings)}")
        facts = " ".join(f"{k}={v}" for k, v in record.facts.items()) or "-"
        print(f"  facts     {facts}")
    print("history:")
    for entry in history:
        where = entry.url or entry.frontend or "-"
        previous = f" (from {entry.previous_provider})" if entry.previous_provider else ""
        print(
            f"  {entry.at.isoformat(timespec='seconds')}  {entry.action:10}  "
            f"{entry.provider}{previous}  {where}  by {entry.actor}"
        )
    print(f"hand-overs ({len(handovers)} latest):")
    for handover in handovers:
        print(
            f"  {handover.at.isoformat(timespec='seconds')}  {handover.source_address or '-'}  "
            f"{handover.proof}  {handover.target}"
        )
    return 0


async def list_devices(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    records = await MappingRepository(pool).list_mappings(
        args.provider, args.frontend, limit=args.limit
    )
    if args.json:
        print(
            json.dumps([{**r.as_json(), "target": _target(r, settings)} for r in records], indent=2)
        )
        return 0
    rows: list[tuple[str, ...]] = [("MAC", "PROVIDER", "FRONTEND", "TARGET")]
    rows += [(r.mac, r.provider, r.frontend or "-", _target(r, settings)) for r in records]
    _table(rows)
    return 0


async def import_devices(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    provider = check_provider_id(args.provider)
    try:
        if args.file == "-":
            body = sys.stdin.buffer.read()
        else:
            body = await asyncio.to_thread(Path(args.file).read_bytes)
    except OSError as error:
        raise UsageError(f"{args.file}: {error.strerror}") from None
    content_type = {".csv": "text/csv", ".json": "application/json"}.get(
        Path(args.file).suffix.lower(), ""
    )
    rows = parse_import(body, content_type, settings.redirect.import_max_rows)
    async with pool.acquire() as connection, connection.transaction():
        results = await MappingRepository(connection).import_mappings(provider, rows, ACTOR)
        await audit_import(connection, audit.cli_actor(), provider, results)
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    failed = [r for r in results if r.error is not None]
    if not args.json:
        for result in failed:
            print(f"row {result.row}: {result.mac or '-'}: {result.error}: {result.message}")
        counts = {
            outcome: sum(r.result.value == outcome for r in results)
            for outcome in ("created", "updated", "unchanged", "error")
        }
        print(f"{len(results)} rows: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 1 if failed else 0


async def transfer_token(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    mac = check_mac(args.mac)
    to_provider = check_provider_id(args.to) if args.to else None
    async with pool.acquire() as connection, connection.transaction():
        issued = await MappingRepository(connection).issue_transfer_token(
            mac, None, to_provider, settings.redirect.transfer_token_lifetime
        )
        if issued is not None:
            await _audit(
                connection,
                "redirect.transfer-token",
                mac,
                {"to": to_provider, "expires_at": issued[1].isoformat()},
            )
    if issued is None:
        raise UsageError(f"no device {mac} is registered")
    token, expires_at = issued
    print(token)
    print(
        f"# single use, for {to_provider or 'any provider'}, valid until "
        f"{expires_at.isoformat(timespec='seconds')}",
        file=sys.stderr,
    )
    return 0


async def list_unknown(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    unknown = await UnknownDeviceRepository(pool).sightings(REDIRECT, args.limit)
    if args.json:
        print(json.dumps([u.as_json() for u in unknown], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [
        ("MAC", "HARDWARE ID", "TYPE", "FIRST SEEN", "LAST SEEN", "POLLS", "ADDRESS", "PROOF")
    ]
    rows += [
        (
            u.mac or "-",
            u.hardware_id or "-",
            u.device_type or "-",
            _age(u.first_seen),
            _age(u.last_seen),
            str(u.polls),
            u.source_address or "-",
            u.proof,
        )
        for u in unknown
    ]
    _table(rows)
    return 0


# --- providers and keys --------------------------------------------------------------------------


async def providers_add(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    provider = check_provider_id(args.id)
    name = clean_text(args.name or provider)
    facts = parse_fact_assignments(args.fact)
    async with pool.acquire() as connection, connection.transaction():
        created = await ProviderRepository(connection).upsert_provider(provider, name, facts)
        await audit.record(
            connection,
            actor=audit.cli_actor(),
            action="redirect.provider-add" if created else "redirect.provider-update",
            object_type="redirect-provider",
            object_id=provider,
            after={"name": name, "facts": dict(facts)},
        )
    print(f"provider {provider} {'added' if created else 'updated'}")
    return 0


async def providers_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    providers = await ProviderRepository(pool).list_providers()
    if args.json:
        print(json.dumps([p.as_json() for p in providers], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("ID", "NAME", "FACTS")]
    rows += [
        (p.id, p.name, " ".join(f"{k}={v}" for k, v in p.facts.items()) or "-") for p in providers
    ]
    _table(rows)
    return 0


async def keys_add(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    provider = check_provider_id(args.provider)
    scopes = check_scopes(args.scope)
    description = clean_text(args.description) if args.description else None
    async with pool.acquire() as connection, connection.transaction():
        key_id, secret = await ApiKeyRepository(connection).add_key(provider, scopes, description)
        await audit.record(
            connection,
            actor=audit.cli_actor(),
            action="redirect.key-add",
            object_type="redirect-key",
            object_id=key_id,
            after={"provider": provider, "scopes": list(scopes), "secret": secret},
        )
    print(f"key id: {key_id}")
    print(f"secret: {secret}")
    print(
        f"# provider {provider}, scopes {' '.join(scopes)}; the secret is shown only now",
        file=sys.stderr,
    )
    return 0


async def keys_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    keys = await ApiKeyRepository(pool).list_keys(args.provider)
    if args.json:
        print(json.dumps([k.as_json() for k in keys], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("KEY ID", "PROVIDER", "SCOPES", "LAST USED", "STATE")]
    rows += [
        (
            k.id,
            k.provider,
            ",".join(k.scopes),
            _age(k.last_used_at),
            "revoked" if k.revoked_at else "active",
        )
        for k in keys
    ]
    _table(rows)
    return 0


async def keys_revoke(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection, connection.transaction():
        revoked = await ApiKeyRepository(connection).revoke_key(args.key_id)
        if revoked:
            await audit.record(
                connection,
                actor=audit.cli_actor(),
                action="redirect.key-revoke",
                object_type="redirect-key",
                object_id=args.key_id,
            )
    if not revoked:
        raise UsageError(f"no active key {args.key_id}")
    print(f"key {args.key_id} revoked")
    return 0


# --- the parser ----------------------------------------------------------------------------------


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:

    def target_options(parser: argparse.ArgumentParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--frontend", metavar="ID", help="an inventory Frontend, e.g. sb1")
        target.add_argument("--url", help="an explicit staging URL instead of a Frontend's")

    redirect = commands.add_parser(
        "redirect", help="zero-touch hand-over of factory-new devices (MAC -> Frontend)"
    )
    actions = redirect.add_subparsers(dest="action", required=True)

    add = actions.add_parser("register", parents=[common], help="send a device to a Frontend")
    add.add_argument("mac", metavar="MAC", help="MAC or serial, e.g. 00-90-33-01-02-03")
    target_options(add)
    add.add_argument("--provider", default="local", help="the owner (default: local)")
    add.add_argument(
        "--fact",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pushed as `mod cmd UP1 setvar r-NAME VALUE` (repeatable)",
    )
    add.add_argument(
        "--transfer-token-file",
        metavar="FILE",
        help="take over another provider's device with its owner's token (- = stdin)",
    )
    add.set_defaults(handler=bind(register_device))

    move = actions.add_parser("move", parents=[common], help="point a device elsewhere")
    move.add_argument("mac", metavar="MAC")
    target_options(move)
    move.set_defaults(handler=bind(move_device))

    remove = actions.add_parser("deregister", parents=[common], help="forget a device")
    remove.add_argument("mac", metavar="MAC")
    remove.set_defaults(handler=bind(deregister_device))

    show = actions.add_parser("show", parents=[common], help="a mapping, its history, hand-overs")
    show.add_argument("mac", metavar="MAC")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=bind(show_device))

    listing = actions.add_parser("list", parents=[common], help="registered devices")
    listing.add_argument("--provider")
    listing.add_argument("--frontend")
    listing.add_argument("--limit", type=int, default=10000)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=bind(list_devices))

    bulk = actions.add_parser(
        "import", parents=[common], help="register many devices from CSV or JSON (exit 1 on errors)"
    )
    bulk.add_argument("file", metavar="FILE", help=".csv or .json (- = stdin)")
    bulk.add_argument("--provider", default="local")
    bulk.add_argument("--json", action="store_true", help="one result per row as JSON")
    bulk.set_defaults(handler=bind(import_devices))

    token = actions.add_parser(
        "transfer-token", parents=[common], help="let another provider take a device over"
    )
    token.add_argument("mac", metavar="MAC")
    token.add_argument("--to", metavar="PROVIDER", help="only this provider may use it")
    token.set_defaults(handler=bind(transfer_token))

    unknown = actions.add_parser(
        "unknown", parents=[common], help="devices that asked but are not registered"
    )
    unknown.add_argument("--limit", type=int, default=1000)
    unknown.add_argument("--json", action="store_true")
    unknown.set_defaults(handler=bind(list_unknown))

    providers = actions.add_parser("providers", help="providers owning mappings")
    provider_actions = providers.add_subparsers(dest="provider_action", required=True)
    provider_add = provider_actions.add_parser(
        "add", parents=[common], help="add a provider (or change its name and facts)"
    )
    provider_add.add_argument("id", metavar="ID")
    provider_add.add_argument("--name")
    provider_add.add_argument(
        "--fact", action="append", default=[], metavar="NAME=VALUE", help="for all its devices"
    )
    provider_add.set_defaults(handler=bind(providers_add))
    provider_list = provider_actions.add_parser("list", parents=[common], help="all providers")
    provider_list.add_argument("--json", action="store_true")
    provider_list.set_defaults(handler=bind(providers_list))

    keys = actions.add_parser("keys", help="providers' API keys (HMAC)")
    key_actions = keys.add_subparsers(dest="key_action", required=True)
    key_add = key_actions.add_parser(
        "add", parents=[common], help="a new key; prints its secret once"
    )
    key_add.add_argument("provider", metavar="PROVIDER")
    key_add.add_argument(
        "--scope",
        action="append",
        required=True,
        help="redirect:read, redirect:write, redirect:transfer (repeatable)",
    )
    key_add.add_argument("--description")
    key_add.set_defaults(handler=bind(keys_add))
    key_list = key_actions.add_parser("list", parents=[common], help="keys (never secrets)")
    key_list.add_argument("--provider")
    key_list.add_argument("--json", action="store_true")
    key_list.set_defaults(handler=bind(keys_list))
    key_revoke = key_actions.add_parser("revoke", parents=[common], help="revoke a key")
    key_revoke.add_argument("key_id", metavar="KEY_ID")
    key_revoke.set_defaults(handler=bind(keys_revoke))
