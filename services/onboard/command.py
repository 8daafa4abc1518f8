"""``pbxfront devices onboard`` and ``pbxfront devices replace``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import asyncpg

from services.core import audit
from services.core.commands import Bind, Commands, argument
from services.core.config import Settings
from services.core.errors import UsageError
from services.onboard.onboarding import DEFAULT_PROVIDER, onboard
from services.onboard.replacement import replace
from services.onboard.rows import OnboardError, parse_csv


async def cmd_onboard(args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool) -> int:
    path = Path(args.file)
    try:
        text = await asyncio.to_thread(path.read_text, "utf-8-sig")  # Excel writes a BOM
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        rows = parse_csv(text, str(path))
        results = await onboard(
            pool, rows, provider=args.provider, actor=audit.cli_actor(), dry_run=args.dry_run
        )
    except OnboardError as error:
        raise UsageError("\n".join(error.problems) + "\nnothing changed") from None
    for result in results:
        print(f"{result.mac}: device {result.device}, mapping {result.mapping}")
    done = "would be onboarded (dry run, nothing changed)" if args.dry_run else "onboarded"
    print(f"{len(results)} device(s) {done}")
    return 0


async def cmd_replace(args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool) -> int:
    try:
        summary = await replace(
            pool, args.old_mac, args.new_mac, device_type=args.type, actor=audit.cli_actor()
        )
    except OnboardError as error:
        raise UsageError("\n".join(error.problems)) from None
    mapping = "moved" if summary["mapping"] else "none"
    carried = summary["certificate_rollout"]
    rollout = f"from {carried['from']}, asks NEW for its certificates" if carried else "none"
    print(
        f"{summary['new']} replaces {summary['old']} for customer {summary['customer']} "
        f"(cpe_id {summary['cpe_id']}, {len(summary['variables'])} variable(s), "
        f"redirect mapping {mapping}, {summary['backups']['versions']} backup version(s) "
        f"moved, certificate roll-out {rollout})"
    )
    for serial in summary["old_certificates"]:
        print(
            f"note: certificate {serial} issued to {summary['old']} is still valid; "
            f"pbxfront ca revoke {serial} once the old device is out of service"
        )
    return 0


def register(
    devices: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    bind: Bind,
) -> None:
    """Add ``onboard`` and ``replace`` to the ``devices`` command group."""
    commands = Commands(devices, common, bind)
    commands.add(
        "onboard",
        cmd_onboard,
        "add devices and their redirect mappings from a CSV file, all or nothing",
        argument(
            "file", help="CSV with a header: mac,type,customer,cpe_id[,class,name,frontend,url]"
        ),
        argument("--dry-run", action="store_true"),
        argument("--provider", default=DEFAULT_PROVIDER),
    )
    commands.add(
        "replace",
        cmd_replace,
        "RMA: a new device takes over an old one's customer, CPE id and variables",
        argument("old_mac", metavar="OLD_MAC", help="the device being replaced"),
        argument("new_mac", metavar="NEW_MAC", help="the replacement device"),
        argument("--type", help="the new device's type (default: the old one's)"),
    )
