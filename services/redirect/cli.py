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
from pathlib import Path
from typing import Any

import asyncpg

from services.core import audit
from services.core.commands import (
    JSON,
    MAC,
    Bind,
    Commands,
    Option,
    age,
    argument,
    print_json,
    print_listing,
    print_table,
    record_audit,
)
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.unknown import REDIRECT, UnknownDevice, UnknownDeviceRepository
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
    ApiKey,
    ApiKeyRepository,
    HandoverRepository,
    MappingRecord,
    MappingRepository,
    Provider,
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


def _read_token(file: str) -> str:
    try:
        text = sys.stdin.readline() if file == "-" else Path(file).read_text("utf-8")
    except OSError as error:
        raise UsageError(f"{file}: {error.strerror}") from None
    token = text.strip()
    if not token:
        raise UsageError(f"{file}: no transfer token in it")
    return token


# --- mappings ------------------------------------------------------------------------------------


async def _audit(
    connection: asyncpg.Connection, action: str, mac: str, after: dict[str, Any] | None
) -> None:
    await record_audit(connection, action, "redirect-mapping", mac, after=after)


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
    print_table(rows)
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
        print_json(results)
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


def _unknown_row(unknown: UnknownDevice) -> tuple[str, ...]:
    return (
        unknown.mac or "-",
        unknown.hardware_id or "-",
        unknown.device_type or "-",
        age(unknown.first_seen),
        age(unknown.last_seen),
        str(unknown.polls),
        unknown.source_address or "-",
        unknown.proof,
    )


async def list_unknown(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    unknown = await UnknownDeviceRepository(pool).sightings(REDIRECT, args.limit)
    header = ("MAC", "HARDWARE ID", "TYPE", "FIRST SEEN", "LAST SEEN", "POLLS", "ADDRESS", "PROOF")
    print_listing(unknown, args.json, header, _unknown_row)
    return 0


# --- providers and keys --------------------------------------------------------------------------


async def providers_add(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    provider = check_provider_id(args.id)
    name = clean_text(args.name or provider)
    facts = parse_fact_assignments(args.fact)
    async with pool.acquire() as connection, connection.transaction():
        created = await ProviderRepository(connection).upsert_provider(provider, name, facts)
        await record_audit(
            connection,
            "redirect.provider-add" if created else "redirect.provider-update",
            "redirect-provider",
            provider,
            after={"name": name, "facts": dict(facts)},
        )
    print(f"provider {provider} {'added' if created else 'updated'}")
    return 0


def _provider_row(provider: Provider) -> tuple[str, ...]:
    facts = " ".join(f"{k}={v}" for k, v in provider.facts.items())
    return (provider.id, provider.name, facts or "-")


async def providers_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    providers = await ProviderRepository(pool).list_providers()
    print_listing(providers, args.json, ("ID", "NAME", "FACTS"), _provider_row)
    return 0


async def keys_add(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    provider = check_provider_id(args.provider)
    scopes = check_scopes(args.scope)
    description = clean_text(args.description) if args.description else None
    async with pool.acquire() as connection, connection.transaction():
        key_id, secret = await ApiKeyRepository(connection).add_key(provider, scopes, description)
        await record_audit(
            connection,
            "redirect.key-add",
            "redirect-key",
            key_id,
            after={"provider": provider, "scopes": list(scopes), "secret": secret},
        )
    print(f"key id: {key_id}")
    print(f"secret: {secret}")
    print(
        f"# provider {provider}, scopes {' '.join(scopes)}; the secret is shown only now",
        file=sys.stderr,
    )
    return 0


def _key_row(key: ApiKey) -> tuple[str, ...]:
    state = "revoked" if key.revoked_at else "active"
    return (key.id, key.provider, ",".join(key.scopes), age(key.last_used_at), state)


async def keys_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    keys = await ApiKeyRepository(pool).list_keys(args.provider)
    print_listing(keys, args.json, ("KEY ID", "PROVIDER", "SCOPES", "LAST USED", "STATE"), _key_row)
    return 0


async def keys_revoke(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection, connection.transaction():
        revoked = await ApiKeyRepository(connection).revoke_key(args.key_id)
        if revoked:
            await record_audit(connection, "redirect.key-revoke", "redirect-key", args.key_id)
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

    def facts(help: str) -> Option:
        return argument("--fact", action="append", default=[], metavar="NAME=VALUE", help=help)

    redirect = Commands(commands, common, bind).group(
        "redirect", "zero-touch hand-over of factory-new devices (MAC -> Frontend)"
    )
    redirect.add(
        "register",
        register_device,
        "send a device to a Frontend",
        argument("mac", metavar="MAC", help="MAC or serial, e.g. 00-90-33-01-02-03"),
        target_options,
        argument("--provider", default="local", help="the owner (default: local)"),
        facts("pushed as `mod cmd UP1 setvar r-NAME VALUE` (repeatable)"),
        argument(
            "--transfer-token-file",
            metavar="FILE",
            help="take over another provider's device with its owner's token (- = stdin)",
        ),
    )
    redirect.add("move", move_device, "point a device elsewhere", MAC, target_options)
    redirect.add("deregister", deregister_device, "forget a device", MAC)
    redirect.add("show", show_device, "a mapping, its history, hand-overs", MAC, JSON)
    redirect.add(
        "list",
        list_devices,
        "registered devices",
        argument("--provider"),
        argument("--frontend"),
        argument("--limit", type=int, default=10000),
        JSON,
    )
    redirect.add(
        "import",
        import_devices,
        "register many devices from CSV or JSON (exit 1 on errors)",
        argument("file", metavar="FILE", help=".csv or .json (- = stdin)"),
        argument("--provider", default="local"),
        argument("--json", action="store_true", help="one result per row as JSON"),
    )
    redirect.add(
        "transfer-token",
        transfer_token,
        "let another provider take a device over",
        MAC,
        argument("--to", metavar="PROVIDER", help="only this provider may use it"),
    )
    redirect.add(
        "unknown",
        list_unknown,
        "devices that asked but are not registered",
        argument("--limit", type=int, default=1000),
        JSON,
    )

    providers = redirect.group("providers", "providers owning mappings", dest="provider_action")
    providers.add(
        "add",
        providers_add,
        "add a provider (or change its name and facts)",
        argument("id", metavar="ID"),
        argument("--name"),
        facts("for all its devices"),
    )
    providers.add("list", providers_list, "all providers", JSON)

    keys = redirect.group("keys", "providers' API keys (HMAC)", dest="key_action")
    keys.add(
        "add",
        keys_add,
        "a new key; prints its secret once",
        argument("provider", metavar="PROVIDER"),
        argument(
            "--scope",
            action="append",
            required=True,
            help="redirect:read, redirect:write, redirect:transfer (repeatable)",
        ),
        argument("--description"),
    )
    keys.add("list", keys_list, "keys (never secrets)", argument("--provider"), JSON)
    keys.add("revoke", keys_revoke, "revoke a key", argument("key_id", metavar="KEY_ID"))
