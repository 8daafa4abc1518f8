"""``pbxfront firmware …``: add, list, import and remove files of the firmware store."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import asyncpg

from services.core.commands import Commands, argument, print_json, record_audit, usage_errors
from services.core.config import Settings
from services.core.errors import UsageError
from services.update.cli.common import _operator
from services.update.firmware import (
    FirmwareError,
    FirmwareStore,
    check_build,
    check_file_name,
    device_model,
    firmware_file_name,
    model_names,
)
from services.update.shared_firmware import (
    SharedFirmwareRepository,
    add_file,
    cache_dir,
    file_sha256,
)


async def _audit_firmware_added(
    pool: asyncpg.Pool, object_id: str, replaced: str | None, after: dict[str, object]
) -> None:
    """The audit row of a stored firmware file (``replaced``: the SHA-256 it took over from)."""
    async with pool.acquire() as connection, connection.transaction():
        await record_audit(
            connection,
            "firmware.add",
            "firmware",
            object_id,
            before={"sha256": replaced} if replaced else None,
            after=after,
        )


async def firmware_add(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    model = device_model(args.type)
    none = settings.update.firmware_none if args.kind == "prot" else settings.update.boot_none
    if model in none and not args.name:
        raise UsageError(
            f"{args.type}: this model gets no {'firmware' if args.kind == 'prot' else 'boot code'}"
            f" (update.{'firmware_none' if args.kind == 'prot' else 'boot_none'}); give --name "
            "to store the file anyway"
        )
    overrides = model_names(
        settings.update.firmware_names if args.kind == "prot" else settings.update.boot_names
    )
    name = args.name or firmware_file_name(args.kind, args.type, overrides)
    shared = settings.update.firmware_source == "database"
    with usage_errors(FirmwareError):
        if shared:
            stored, replaced = await add_file(
                pool,
                Path(args.file),
                args.build,
                name,
                by=_operator(),
                device_type=args.type.upper(),
            )
            where, sha256, size = f"firm/{args.build}/{name}", stored.sha256, stored.size
        else:
            store = FirmwareStore(settings.update.firmware_dir)
            added = await asyncio.to_thread(store.add, Path(args.file), args.build, name)
            where, sha256, size, replaced = str(added.path), added.sha256, added.size, None
    await _audit_firmware_added(
        pool,
        f"{args.build}/{name}",
        replaced,
        {"sha256": sha256, "size": size, "type": args.type.upper()},
    )
    print(f"{where}  sha256 {sha256}  {size} bytes")
    if shared:
        print("stored in the database: every Frontend on it serves this file")
    print(
        f'policy: set update variable fw-{args.kind} = "{args.build}" on the device_type '
        f"layer of {args.type.upper()} (or narrower) to roll it out"
    )
    return 0


async def firmware_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    if settings.update.firmware_source == "database":
        files = await SharedFirmwareRepository(pool).files(with_caches=True)
        if args.json:
            print_json(files)
            return 0
        for shared in files:
            cached = ", ".join(shared.cached_on) or "no node yet"
            print(
                f"{shared.build}/{shared.name}  {shared.size} bytes  sha256 {shared.sha256}  "
                f"added {shared.added_at:%Y-%m-%d %H:%M} by {shared.added_by}  cached on: {cached}"
            )
        return 0
    store = FirmwareStore(settings.update.firmware_dir)
    local = await asyncio.to_thread(store.list)
    if args.json:
        print(
            json.dumps(
                [
                    {"build": f.build, "name": f.name, "sha256": f.sha256, "size": f.size}
                    for f in local
                ],
                indent=2,
            )
        )
        return 0
    for item in local:
        print(f"{item.build}/{item.name}  {item.size} bytes  sha256 {item.sha256}")
    return 0


async def firmware_import(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    """Store every file of this node's firmware_dir in the database (moving to
    ``update.firmware_source = "database"``); files already there with the same content are
    left as they are."""
    store = FirmwareStore(settings.update.firmware_dir)
    local = await asyncio.to_thread(store.list)
    if not local:
        print(f"{store.firm}: no files listed in any SHA256SUMS")
        return 1
    known = {(f.build, f.name): f.sha256 for f in await SharedFirmwareRepository(pool).files()}
    failed = 0
    for item in local:
        if known.get((item.build, item.name)) == item.sha256:
            print(f"{item.build}/{item.name}: already stored")
            continue
        sha256, size = await asyncio.to_thread(file_sha256, item.path)
        if sha256 != item.sha256:
            # A damaged local copy is never shared.
            print(
                f"{item.path}: SHA-256 {sha256} is not the {item.sha256} SHA256SUMS lists; skipped"
            )
            failed += 1
            continue
        with usage_errors(FirmwareError):
            stored, replaced = await SharedFirmwareRepository(pool).store(
                item.path, sha256, size, item.build, item.name, by=_operator(), device_type=None
            )
        await _audit_firmware_added(
            pool,
            f"{item.build}/{item.name}",
            replaced,
            {"sha256": stored.sha256, "size": stored.size, "imported": True},
        )
        print(f"{item.build}/{item.name}  sha256 {stored.sha256}  {stored.size} bytes  stored")
    if settings.update.firmware_source != "database":
        print('set update.firmware_source = "database" on every node to serve the stored files')
    return 1 if failed else 0


async def firmware_remove(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    with usage_errors(FirmwareError):
        check_build(args.build)
        check_file_name(args.name)
    sha256: str | None
    if settings.update.firmware_source == "database":
        removed = await SharedFirmwareRepository(pool).remove(args.build, args.name)
        sha256 = removed.sha256 if removed is not None else None
    else:
        store = FirmwareStore(settings.update.firmware_dir)
        before = await asyncio.to_thread(store.find, args.build, args.name)
        sha256 = before.sha256 if before is not None else None
        if not await asyncio.to_thread(store.remove, args.build, args.name):
            sha256 = None
    if sha256 is None:
        print(f"firm/{args.build}/{args.name}: not in the firmware store")
        return 1
    async with pool.acquire() as connection, connection.transaction():
        await record_audit(
            connection,
            "firmware.remove",
            "firmware",
            f"{args.build}/{args.name}",
            before={"sha256": sha256},
        )
    print(f"firm/{args.build}/{args.name}: removed (sha256 {sha256})")
    if settings.update.firmware_source == "database":
        print(
            f"every node drops its cached copy at its next check (this node: {cache_dir(settings)})"
        )
    return 0


def register(update: Commands) -> None:
    """The ``pbxfront firmware …`` sub-commands."""
    firmware = update.group("firmware", "the firmware store (firmware/firm/<build>/)")
    firmware.add(
        "add",
        firmware_add,
        "add a firmware file",
        argument("file", metavar="FILE"),
        argument("--build", required=True, help="the build as devices report it in PROT/BOOT"),
        argument("--type", required=True, help="device type, e.g. IP232"),
        argument(
            "--kind",
            choices=("prot", "boot"),
            default="prot",
            help="firmware (prot, default) or boot code (boot)",
        ),
        argument("--name", help="file name in the store (default ip<model>.bin/boot<model>.bin)"),
    )
    firmware.add(
        "list",
        firmware_list,
        "files in the store (firmware_source = database: and which nodes have them cached)",
        argument("--json", action="store_true", help="print JSON instead of lines"),
    )
    firmware.add(
        "import",
        firmware_import,
        "store every file of this node's firmware_dir in the database (shared firmware)",
    )
    firmware.add(
        "remove",
        firmware_remove,
        "take a file out of the store (devices get 404)",
        argument("build", metavar="BUILD", help="the build folder, e.g. 13r2sr7"),
        argument("name", metavar="FILE", help="the file name, e.g. ip232.bin"),
    )
