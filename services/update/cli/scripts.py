"""``pbxfront scripts …``: check, plan, publish, versions, rollback, render."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg

from services.core import errors
from services.core.commands import (
    JSON,
    Commands,
    argument,
    device_mac,
    print_json,
    record_audit,
    usage_errors,
)
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.identity import DeviceIdentity, Proof
from services.update.cli.common import _base_url, _operator, _snapshot, _stores
from services.update.plan import ScriptPlan
from services.update.problems import Problems
from services.update.provisioning import (
    STAGING,
    UPDATE,
    Lifecycle,
    PolicyError,
    PollArguments,
    Snapshot,
    Urls,
    check_tree,
    look_up,
    reply_for,
)
from services.update.repository import UpdateRepository
from services.update.scripts import ScriptError, ScriptStore, SecretRequired, read_tree_files
from services.update.versions import ScriptVersionRepository

# A check another package contributes to `scripts check` (composed by services/cli.py): its
# problems, one line each ("where: what", e.g. "frontend sb1: port 9007 used twice").
ExtraCheck = Callable[[Settings, asyncpg.Pool], Awaitable[list[str]]]


async def _checked(
    settings: Settings, pool: asyncpg.Pool, extra_checks: Sequence[ExtraCheck]
) -> tuple[ScriptStore, Snapshot, Problems]:
    """The scripts folder checked for every device (and by the composed extra checks)."""
    store, firmware = await _stores(settings, pool)
    snapshot = await _snapshot(pool)
    problems = await asyncio.to_thread(
        functools.partial(
            check_tree,
            store,
            snapshot,
            Urls(_base_url(settings, None)),
            poll_minutes=settings.update.poll_interval,
            firmware_available=firmware.listed,
            extra_commands=settings.update.extra_commands,
            lifecycle=Lifecycle.from_settings(settings.update),
            firmware_dir=settings.update.firmware_dir,
        )
    )
    for extra in extra_checks:
        for line in await extra(settings, pool):
            where, separator, what = line.partition(": ")
            problems.add(where if separator else "check", "check", what if separator else line)
    return store, snapshot, problems


async def scripts_check(
    args: argparse.Namespace,
    settings: Settings,
    pool: asyncpg.Pool,
    extra_checks: Sequence[ExtraCheck] = (),
) -> int:
    """Every problem of the scripts folder once, with the devices it affects."""
    store, snapshot, problems = await _checked(settings, pool, extra_checks)
    devices = len(snapshot.inventory.devices)
    if args.json:
        report = {
            "ok": not problems,
            "files": len(store.sources),
            "devices": devices,
            "problems": problems.as_json(),
        }
        print(json.dumps(report, indent=2))
        return 1 if problems else 0
    for line in problems.lines():
        print(line)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(store.sources)} script files, {devices} devices, staging.txt and update.txt")
    return 0


async def compute_plan(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    scripts: Path | None = None,
    customer: str | None = None,
    base_url: str | None = None,
) -> tuple[ScriptPlan, bool]:
    """The plan `scripts plan` shows (services/update/plan.py) and whether a pending tree was
    planned (False: the live tree against the hashes last sent). `pbxfront bench plan` times
    exactly this."""
    from services.update.plan import plan_scripts
    from services.update.versions import PublishedScripts

    live, firmware = await _stores(settings, pool)
    pending: ScriptStore | None = None
    if scripts is not None:
        pending = ScriptStore(scripts)
        await asyncio.to_thread(pending.refresh)
    if settings.update.scripts_source == "database":
        # Devices get the published version: plan the files (or --scripts) against it.
        async with pool.acquire() as connection:
            current = await ScriptVersionRepository(connection).current_id()
            if current is not None:
                pending = pending or live
                live = await PublishedScripts(settings.update.scripts_dir).get(connection, current)
    snapshot = await _snapshot(pool)
    statuses = await UpdateRepository(pool).statuses(customer=customer, limit=10**9)
    devices = [snapshot.by_mac[s.mac] for s in statuses if s.mac in snapshot.by_mac]
    plan = await asyncio.to_thread(
        plan_scripts,
        pending or live,
        live if pending is not None else None,
        snapshot,
        Urls(_base_url(settings, base_url)),
        poll_minutes=settings.update.poll_interval,
        hashes_sent={s.mac: s.hash_sent for s in statuses},
        reported_builds={s.mac: (s.prot, s.boot) for s in statuses},
        firmware_available=firmware.listed,
        devices=devices,
    )
    return plan, pending is not None


async def scripts_plan(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    """Which devices' replies a pending script tree changes (services/update/plan.py)."""
    plan, planned_pending = await compute_plan(
        settings,
        pool,
        scripts=Path(args.scripts) if args.scripts else None,
        customer=args.customer,
        base_url=args.base_url,
    )
    if args.json:
        rows = [
            {
                "mac": change.device.mac,
                "hardware_id": change.device.hardware_id,
                "customer": change.device.customer,
                "before": change.before,
                "after": change.after,
                "firmware": list(change.firmware),
                "diff": list(change.diff),
            }
            for change in [*plan.changes, *plan.firmware_only]
        ]
        print(
            json.dumps(
                {
                    "devices": plan.devices,
                    "changes": rows,
                    "problems": plan.problems.as_json(),
                },
                indent=2,
            )
        )
        return 1 if plan.problems else 0
    for change in plan.changes:
        print(change.headline())
        if args.diff:
            for line in change.diff:
                print(f"    {line}")
    for change in plan.firmware_only:
        print(change.headline().replace("~", "F", 1))
    for line in plan.problem_lines():
        print(f"! {line}")
    if not planned_pending:
        print("(against the hash each device was last sent; --scripts DIR plans a pending tree)")
    print(plan.summary())
    return 1 if plan.problems else 0


async def scripts_publish(
    args: argparse.Namespace,
    settings: Settings,
    pool: asyncpg.Pool,
    extra_checks: Sequence[ExtraCheck] = (),
) -> int:
    """Check the scripts folder as `scripts check` does and store it as the version every node
    serves (update.scripts_source = "database"); refused while the check finds a problem."""
    _store, _snapshot_checked, problems = await _checked(settings, pool, extra_checks)
    files, unreadable = await asyncio.to_thread(read_tree_files, settings.update.scripts_dir)
    for name, why in unreadable.items():
        problems.add(str(settings.update.scripts_dir / name), "file", why)
    if problems:
        for line in problems.lines():
            print(line)
        raise UsageError(f"not published: {len(problems)} problem(s) (pbxfront scripts check)")
    async with pool.acquire() as connection, connection.transaction():
        version, created = await ScriptVersionRepository(connection).publish(
            files, by=_operator(), comment=args.comment or "", activate=not args.staged
        )
        if created:
            await record_audit(
                connection,
                "scripts.publish-staged" if args.staged else "scripts.publish",
                "script_version",
                str(version.id),
                after={
                    "files": version.files,
                    "sha256": version.tree_sha256,
                    "comment": version.comment,
                },
            )
    if not created:
        print(f"no changes: version {version.id} holds these {version.files} files already")
        return 0
    print(f"published version {version.id}: {version.files} files, {version.bytes} bytes")
    if args.staged:
        print(f"not current yet: roll it out with pbxfront rollouts start {version.id}")
    if settings.update.scripts_source != "database":
        print(
            'note: this node serves its scripts folder (update.scripts_source = "files"); '
            'set it to "database" on every Frontend to serve published versions'
        )
    return 0


async def scripts_versions(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    versions = await ScriptVersionRepository(pool).versions(args.limit)
    if args.json:
        print_json(versions)
        return 0
    for v in versions:
        mark = "*" if v.current else " "
        comment = f"  {v.comment}" if v.comment else ""
        print(
            f"{mark} {v.id:>4}  {v.published_at:%Y-%m-%d %H:%M:%S}  {v.published_by}  "
            f"{v.files} files  {v.tree_sha256[:12]}{comment}"
        )
    if not versions:
        print("no published versions (pbxfront scripts publish)")
    return 0


async def scripts_rollback(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection, connection.transaction():
        repository = ScriptVersionRepository(connection)
        before = await repository.current_id()
        with usage_errors(errors.NotFound):
            version = await repository.activate(args.version, by=_operator())
        await record_audit(
            connection,
            "scripts.rollback",
            "script_version",
            str(version.id),
            before={"current": before},
            after={"current": version.id},
        )
    print(f"version {version.id} is current again; every node serves it from its next poll")
    return 0


async def scripts_render(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    mac = device_mac(args.device)
    store, firmware = await _stores(settings, pool)
    snapshot = await _snapshot(pool)
    device = snapshot.by_mac.get(mac)
    if device is None:
        raise UsageError(f"no device {mac} in the inventory")
    if args.explain:
        print(f"# variables of {device.hardware_id} ({device.mac}), most specific layer wins:")
        for name, item in sorted(snapshot.resolve(device).items()):
            value = "(secret)" if item.secret else item.value
            where = item.layer if item.layer == "global" else f"{item.layer} {item.scope}"
            print(f"#   {name} = {value}    <- {where}")
    proof = Proof.CLAIMED if args.claimed else Proof.PROVEN
    identity = DeviceIdentity(proof, device.mac, device.hardware_id, device.device_type)
    arguments = PollArguments(check=args.check, prot=args.prot, boot=args.boot)
    with usage_errors(ScriptError, PolicyError, SecretRequired):
        context = look_up(
            snapshot,
            device,
            identity,
            arguments,
            args.phase,
            Urls(_base_url(settings, args.base_url)),
            Lifecycle.from_settings(settings.update),
        )
        reply = reply_for(store, context, firmware.listed)
    sys.stdout.write(reply.text.replace("\r\n", "\n"))
    return 0


def register(update: Commands, extra_checks: Sequence[ExtraCheck] = ()) -> None:
    """The ``pbxfront scripts …`` sub-commands."""
    scripts = update.group("scripts", "the update scripts (staging_scripts/)")
    base_url = argument("--base-url", metavar="URL", help="default: update.public_url")
    scripts.add(
        "check",
        functools.partial(scripts_check, extra_checks=extra_checks),
        "render every script for every device; each problem once with the devices it affects",
        argument("--json", action="store_true", help="every affected device, as JSON"),
    )
    scripts.add(
        "plan",
        scripts_plan,
        "which devices' scripts a pending tree changes (hash per device, diff)",
        argument("--scripts", metavar="DIR", help="the pending tree (default: plan the live tree)"),
        argument("--customer", metavar="ID", help="only this customer's devices"),
        argument("--diff", action="store_true", help="show each device's script diff"),
        base_url,
        JSON,
    )
    scripts.add(
        "publish",
        functools.partial(scripts_publish, extra_checks=extra_checks),
        "check the scripts folder and make it the version every node serves",
        argument("--comment", help="why (shown by scripts versions)"),
        argument(
            "--staged",
            action="store_true",
            help="store the version without making it current (for pbxfront rollouts start)",
        ),
    )
    scripts.add(
        "versions",
        scripts_versions,
        "published versions; * marks the current one",
        argument("--limit", type=int, default=50, help="how many, newest first"),
        argument("--json", action="store_true", help="as JSON"),
    )
    scripts.add(
        "rollback",
        scripts_rollback,
        "make a published version current again",
        argument("version", type=int, metavar="VERSION", help="from scripts versions"),
    )
    scripts.add(
        "render",
        scripts_render,
        "what one device gets",
        argument("--device", required=True, metavar="MAC"),
        argument("--phase", choices=(STAGING, UPDATE), default=UPDATE),
        argument("--explain", action="store_true", help="show each variable's layer"),
        argument(
            "--claimed",
            action="store_true",
            help="as a device without certificate (secrets withheld)",
        ),
        argument("--check", metavar="HASH", help="the device's CHECK value"),
        argument("--prot", metavar="BUILD", help="the device's PROT value"),
        argument("--boot", metavar="BUILD", help="the device's BOOT value"),
        base_url,
    )
    from services.update import phpus

    phpus.register(scripts.subparsers, scripts.common)
