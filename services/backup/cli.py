"""``pbxfront backups list|versions|show|diff|prune|alerts``: the archive from the command line.

A device is named by its MAC (any notation) or hardware id. Secrets are redacted in ``show`` and
``diff`` unless ``--show-secrets`` is given; that is written to the security log (the CLI user
has database access, i.e. the admin role).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.backup.app import run_maintenance
from services.backup.diff import Redaction, redact_content
from services.backup.handlers import render_diff, versions_to_compare
from services.backup.normalize import Normalizer
from services.backup.repository import (
    ArchiveRepository,
    BackupDevice,
)
from services.core import errors
from services.core.commands import (
    CUSTOMER,
    JSON,
    Bind,
    Commands,
    age,
    argument,
    optional_number,
    print_table,
    record_audit,
    usage_errors,
)
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.identity import parse_device

security_log = logging.getLogger("pbxfront.security")


async def _device(repository: ArchiveRepository, value: str) -> BackupDevice:
    with usage_errors(errors.Invalid):
        mac, hardware_id = parse_device(value)
    device = await repository.device(mac, hardware_id)
    if device is None:
        raise UsageError(f"no backups of {value}")
    return device


def _version_argument(value: str | None) -> int | None:
    return optional_number(
        value, "latest", "a version id (see `pbxfront backups versions`) or latest"
    )


async def _secrets_shown(pool: asyncpg.Pool, device: BackupDevice, versions: str) -> None:
    security_log.warning(
        "pbxfront security: secrets-shown from cli user=%s device=%s versions=%s",
        getpass.getuser(),
        device.mac,
        versions,
    )
    async with pool.acquire() as connection, connection.transaction():
        await record_audit(
            connection, "backup.show-secrets", "backup", device.mac, after={"versions": versions}
        )


async def backups_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    now = datetime.now(UTC)
    async with pool.acquire() as connection:
        devices = await ArchiveRepository(connection).devices(customer=args.customer, limit=100000)
    if args.json:
        print(json.dumps([d.as_json(now) for d in devices], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [
        ("MAC", "HARDWARE ID", "CUSTOMER", "VERSIONS", "LAST BACKUP", "LAST CHANGE", "STALE")
    ]
    for d in devices:
        rows.append(
            (
                d.mac,
                d.hardware_id,
                d.customer,
                str(d.versions),
                age(d.last_put_at, now),
                age(d.last_changed_at, now),
                "yes" if d.stale_alerted_at else "-",
            )
        )
    print_table(rows)
    return 0


async def backups_versions(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        repository = ArchiveRepository(connection)
        device = await _device(repository, args.device)
        versions = await repository.versions(device.mac, limit=args.limit, before=args.before)
    if args.json:
        print(json.dumps([v.as_json() for v in versions], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("ID", "RECEIVED (UTC)", "LAST SEEN", "SIZE", "CHANGE", "KIND")]
    for v in versions:
        change = "first" if v.lines_added is None else f"+{v.lines_added} -{v.lines_removed}"
        rows.append(
            (
                str(v.id),
                v.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                v.last_seen_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                str(v.size),
                change,
                v.encoding,
            )
        )
    print_table(rows)
    if len(versions) == args.limit:
        print(f"(more: --before {versions[-1].id})", file=sys.stderr)
    return 0


async def backups_show(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        repository = ArchiveRepository(connection)
        device = await _device(repository, args.device)
        wanted = _version_argument(args.version) or device.latest_version
        version = await repository.version(device.mac, wanted) if wanted is not None else None
        if version is None:
            raise UsageError(f"no version {args.version} of {device.hardware_id}")
        content = await repository.content(version.content_sha256)
    if args.show_secrets:
        await _secrets_shown(pool, device, str(version.id))
    else:
        backup = settings.backup
        content = redact_content(
            content, Redaction.build(backup.secret_options, backup.secret_var_flags)
        )
    sys.stdout.flush()
    sys.stdout.buffer.write(content)
    sys.stdout.buffer.flush()
    return 0


async def backups_diff(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    backup = settings.backup
    async with pool.acquire() as connection:
        repository = ArchiveRepository(connection)
        device = await _device(repository, args.device)
        with usage_errors(errors.NotFound):
            pair = await versions_to_compare(
                repository,
                device,
                _version_argument(args.old),
                _version_argument(args.new),
            )
    if args.show_secrets:
        await _secrets_shown(pool, device, f"{pair.old[0].id},{pair.new[0].id}")
    text = render_diff(
        device,
        pair,
        normalizer=None if args.all_lines else Normalizer.build(backup.ignore_patterns),
        redaction=None
        if args.show_secrets
        else Redaction.build(backup.secret_options, backup.secret_var_flags),
    )
    if not text:
        print(
            f"versions {pair.old[0].id} and {pair.new[0].id} do not differ"
            + ("" if args.all_lines else " (volatile lines ignored; --all-lines shows them)"),
            file=sys.stderr,
        )
    sys.stdout.write(text)
    return 0


async def backups_prune(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    report = await run_maintenance(
        pool, settings, datetime.now(UTC), dry_run=args.dry_run, customer=args.customer
    )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    if not report.ran:
        print("another node is running the backup maintenance right now; try again later")
        return 1
    verb = "would delete" if args.dry_run else "deleted"
    for pruned in report.pruned:
        ids = ", ".join(str(v.id) for v in pruned.versions)
        print(
            f"{verb} {len(pruned.versions)} version(s) of {pruned.mac} ({pruned.customer}): {ids}"
        )
    total = sum(len(p.versions) for p in report.pruned)
    stale = "would alert" if args.dry_run else "alerted"
    for mac in report.stale_alerts:
        print(f"{stale}: backup of {mac} is stale")
    print(
        f"{verb} {total} version(s) in total"
        + (" (dry run: nothing changed)" if args.dry_run else "")
    )
    return 0


async def backups_alerts(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        alerts = await ArchiveRepository(connection).alerts(limit=args.limit)
    if args.json:
        print(json.dumps([a.as_json() for a in alerts], indent=2))
        return 0
    for alert in alerts:
        stamp = alert.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{alert.id}  {stamp}  {alert.kind:7}  {alert.message}")
    return 0


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    backups = Commands(commands, common, bind).group("backups", "the config backup archive")
    device = argument("device", metavar="DEVICE", help="MAC or hardware id")
    limit = argument("--limit", type=int, default=50, metavar="N")
    show_secrets = argument(
        "--show-secrets", action="store_true", help="do not redact passwords (logged)"
    )
    backups.add("list", backups_list, "devices with their last backup and its age", CUSTOMER, JSON)
    backups.add(
        "versions",
        backups_versions,
        "a device's versions, newest first",
        device,
        limit,
        argument("--before", type=int, metavar="ID", help="only versions older than ID"),
        JSON,
    )
    backups.add(
        "show",
        backups_show,
        "one version as stored",
        device,
        argument("version", metavar="VERSION", nargs="?", help="version id (default latest)"),
        show_secrets,
    )
    backups.add(
        "diff",
        backups_diff,
        "unified diff of two versions (default latest vs previous)",
        device,
        argument("old", metavar="FROM", nargs="?", help="older version id"),
        argument("new", metavar="TO", nargs="?", help="newer version id (default latest)"),
        show_secrets,
        argument(
            "--all-lines", action="store_true", help="include the volatile lines (protocol.md §5)"
        ),
    )
    backups.add(
        "prune",
        backups_prune,
        "apply retention and raise stale alerts now",
        argument("--dry-run", action="store_true", help="only show what would be deleted"),
        CUSTOMER,
        JSON,
    )
    backups.add("alerts", backups_alerts, "changed and stale alerts", limit, JSON)
