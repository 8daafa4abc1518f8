"""``pbxfront scripts|devices|firmware …``: the update service's operator commands."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from services.core import audit, errors
from services.core.commands import Bind
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.identity import DeviceIdentity, IdentityError, Proof, normalize_mac
from services.core.inventory import Device, InventoryError, InventoryRepository
from services.core.unknown import UPDATE as UPDATE_SERVICE
from services.core.unknown import UnknownDeviceRepository
from services.update.canary import CanaryRepository, Rollout, advance, parse_waves
from services.update.firmware import (
    FirmwareError,
    FirmwareSource,
    FirmwareStore,
    check_build,
    check_file_name,
    device_model,
    firmware_file_name,
    model_names,
)
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
from services.update.repository import RolloutRepository, UpdateRepository
from services.update.rollout import RolloutState
from services.update.scripts import ScriptError, ScriptStore, SecretRequired, read_tree_files
from services.update.shared_firmware import (
    SharedFirmwareRepository,
    add_file,
    cache_dir,
    file_sha256,
    firmware_source,
)
from services.update.versions import ScriptVersionRepository


async def _snapshot(pool: asyncpg.Pool) -> Snapshot:
    from services.update.state import SnapshotCache

    async with pool.acquire() as connection:
        return await SnapshotCache().get(connection)


def _base_url(settings: Settings, given: str | None) -> str:
    if given:
        return given.rstrip("/")
    if settings.update.public_url:
        return settings.update.public_url.rstrip("/")
    return "https://frontend.invalid"


async def _stores(settings: Settings, pool: asyncpg.Pool) -> tuple[ScriptStore, FirmwareSource]:
    store = ScriptStore(settings.update.scripts_dir)
    firmware = firmware_source(settings, pool)
    await asyncio.to_thread(store.refresh)
    await firmware.refresh()
    return store, firmware


def _mac(value: str) -> str:
    try:
        return normalize_mac(value)
    except IdentityError as error:
        raise UsageError(str(error)) from None


# --- scripts -----------------------------------------------------------------------------------


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
            await audit.record(
                connection,
                actor=audit.cli_actor(),
                action="scripts.publish-staged" if args.staged else "scripts.publish",
                object_type="script_version",
                object_id=str(version.id),
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
        print(json.dumps([v.as_json() for v in versions], indent=2))
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
        try:
            version = await repository.activate(args.version, by=_operator())
        except errors.NotFound as error:
            raise UsageError(str(error)) from None
        await audit.record(
            connection,
            actor=audit.cli_actor(),
            action="scripts.rollback",
            object_type="script_version",
            object_id=str(version.id),
            before={"current": before},
            after={"current": version.id},
        )
    print(f"version {version.id} is current again; every node serves it from its next poll")
    return 0


# --- canary roll-outs --------------------------------------------------------------------------


async def rollouts_start(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    _store, firmware = await _stores(settings, pool)
    if (args.version is None) == (args.firmware is None):
        raise UsageError("give a script VERSION, or --firmware TYPE --build BUILD")
    if args.firmware is not None and not args.build:
        raise UsageError("--firmware needs --build (as devices report it in PROT/BOOT)")
    try:
        waves = parse_waves(args.wave or ["10%", "50%", "100%"])
        async with pool.acquire() as connection, connection.transaction():
            repository = CanaryRepository(connection)
            if args.firmware is not None:
                if not firmware.listed(args.build, firmware_file_name(args.kind, args.firmware)):
                    print(
                        f"note: firmware/firm/{args.build}/"
                        f"{firmware_file_name(args.kind, args.firmware)} is not in the firmware "
                        "store (pbxfront firmware add)"
                    )
                rollout = await repository.start_firmware(
                    args.firmware,
                    args.kind,
                    args.build,
                    waves,
                    soak_seconds=args.soak,
                    wave_timeout_seconds=args.wave_timeout,
                    by=_operator(),
                )
            else:
                rollout = await repository.start(
                    args.version,
                    waves,
                    soak_seconds=args.soak,
                    wave_timeout_seconds=args.wave_timeout,
                    by=_operator(),
                )
            await audit.record(
                connection,
                actor=audit.cli_actor(),
                action="rollout.start",
                object_type="rollout",
                object_id=str(rollout.id),
                after=rollout.as_json(),
            )
    except (errors.Invalid, errors.NotFound, errors.Conflict) as error:
        raise UsageError(str(error)) from None
    print(
        f"roll-out {rollout.id}: {rollout.change}, "
        f"waves {', '.join(w.label for w in rollout.waves)}; wave {rollout.waves[0].label} "
        f"has {rollout.assigned} devices"
    )
    if rollout.kind == "scripts" and settings.update.scripts_source != "database":
        print('note: roll-outs need update.scripts_source = "database" on every Frontend')
    return 0


async def rollouts_status(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        repository = CanaryRepository(connection)
        rollouts = await repository.list(args.limit)
        progress = {
            r.id: await repository.progress(r) for r in rollouts if r.state in ("running", "halted")
        }
    if args.json:
        print(
            json.dumps(
                [
                    {
                        **r.as_json(),
                        "waiting": list(progress[r.id].waiting) if r.id in progress else [],
                    }
                    for r in rollouts
                ],
                indent=2,
            )
        )
        return 0
    for r in rollouts:
        print(
            f"{r.id:>4}  {r.state:8}  {r.change}  wave {r.wave + 1}/{len(r.waves)} "
            f"({r.waves[r.wave].label})  {r.assigned} devices in waves  by {r.created_by}"
        )
        if r.reason:
            print(f"      reason: {r.reason}")
        if r.id in progress and progress[r.id].waiting:
            waiting = progress[r.id].waiting
            print(f"      not back in sync yet: {', '.join(waiting[:10])}")
    if not rollouts:
        print("no roll-outs (pbxfront rollouts start VERSION)")
    return 0


async def _open_rollout(connection: asyncpg.Connection) -> Rollout:
    rollout = await CanaryRepository(connection).open_rollout()
    if rollout is None:
        raise UsageError("no roll-out in progress")
    return rollout


async def rollouts_halt(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection, connection.transaction():
        rollout = await _open_rollout(connection)
        reason = f"halted by {_operator()}" + (f": {args.reason}" if args.reason else "")
        await CanaryRepository(connection).set_state(rollout.id, "halted", reason)
        await _audit_rollout(connection, "rollout.halt", rollout, "halted")
    print(f"roll-out {rollout.id} halted; its devices keep what they have")
    return 0


async def rollouts_resume(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection, connection.transaction():
        rollout = await _open_rollout(connection)
        await CanaryRepository(connection).set_state(rollout.id, "running", None, restart_wave=True)
        await _audit_rollout(connection, "rollout.resume", rollout, "running")
    label = rollout.waves[rollout.wave].label
    print(f"roll-out {rollout.id} running again; wave {label} is watched anew")
    return 0


async def rollouts_abort(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection, connection.transaction():
        rollout = await _open_rollout(connection)
        await CanaryRepository(connection).set_state(
            rollout.id, "aborted", f"aborted by {_operator()}"
        )
        await _audit_rollout(connection, "rollout.abort", rollout, "aborted")
    back = (
        f"the inventory's fw-{rollout.firmware_kind} for {rollout.device_type}"
        if rollout.kind == "firmware"
        else f"version {rollout.from_version}"
    )
    print(f"roll-out {rollout.id} aborted: every device gets {back} again from its next poll")
    return 0


async def rollouts_advance(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        print(await advance(connection, datetime.now(UTC), by=_operator()))
    return 0


async def _audit_rollout(
    connection: asyncpg.Connection, action: str, rollout: Rollout, state: str
) -> None:
    await audit.record(
        connection,
        actor=audit.cli_actor(),
        action=action,
        object_type="rollout",
        object_id=str(rollout.id),
        before={"state": rollout.state},
        after={"state": state},
    )


def _operator() -> str:
    """Who runs the command: the OS user (the CLI runs on the Frontend), as the audit log has
    it."""
    return f"cli:{audit.cli_actor().name}"


async def scripts_render(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    mac = _mac(args.device)
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
    try:
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
    except (ScriptError, PolicyError, SecretRequired) as error:
        raise UsageError(str(error)) from None
    sys.stdout.write(reply.text.replace("\r\n", "\n"))
    return 0


# --- devices -----------------------------------------------------------------------------------


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


async def devices_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    stale = 3 * 60 * settings.update.poll_interval if args.stale else None
    repository = UpdateRepository(pool)
    statuses = await repository.statuses(customer=args.customer, stale_after_seconds=stale)
    # What `frontend check --backups --record` found wrong in each device's latest backup.
    findings = await repository.backup_findings()
    if args.json:
        print(
            json.dumps(
                [{**s.as_json(), "findings": findings.get(s.mac, [])} for s in statuses], indent=2
            )
        )
        return 0
    header = (
        "MAC",
        "HARDWARE ID",
        "CUSTOMER",
        "TYPE",
        "LAST SEEN",
        "PROOF",
        "PHASE",
        "SYNC",
        "FIRMWARE",
        "SCRIPTS",
        "FINDINGS",
        "ADDRESS",
    )
    rows: list[tuple[str, ...]] = [header]
    for s in statuses:
        sync = "yes" if s.in_sync else ("restage" if s.restage_requested else "no")
        if s.last_error:
            sync = "error"
        # A device whose ver names the wanted build while PROT/BOOT does not: firmware lines
        # withheld after update.firmware_attempts (issue #14).
        firmware = f"stuck:{s.firmware_stuck}" if s.firmware_stuck else (s.prot or "-")
        rows.append(
            (
                s.mac,
                s.hardware_id,
                s.customer,
                s.device_type,
                _age(s.last_seen),
                s.proof or "-",
                s.phase or "-",
                sync,
                firmware,
                f"v{s.script_version}" if s.script_version is not None else "-",
                ",".join(findings.get(s.mac, [])) or "-",
                s.source_address or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if args.unknown:
        unknown = await UnknownDeviceRepository(pool).sightings(UPDATE_SERVICE)
        print(f"\nunknown devices that polled ({len(unknown)}):")
        for item in unknown:
            print(
                f"  {item.mac or '-'}  {item.hardware_id or '-'}  {item.device_type or '-'}  "
                f"{_age(item.last_seen)}  {item.polls} polls  {item.source_address or '-'}"
            )
    return 0


async def devices_restage(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    mac = _mac(args.mac)
    async with pool.acquire() as connection, connection.transaction():
        if not await UpdateRepository(connection).request_restage(mac):
            raise UsageError(f"no device {mac} in the inventory")
        await audit.record(
            connection,
            actor=audit.cli_actor(),
            action="device.restage",
            object_type="device",
            object_id=mac,
        )
    print(f"{mac}: will be sent through staging.txt at its next poll")
    return 0


async def devices_adopt(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    """Take a device that polled but is not in the inventory into it (the seed's ZCD)."""
    mac = _mac(args.mac)
    unknown = UnknownDeviceRepository(pool)
    sighting = await unknown.find(UPDATE_SERVICE, mac)
    device_type = args.type or (sighting.device_type if sighting else None)
    if device_type is None:
        raise UsageError(f"{mac} has not polled with its type; give --type")
    device = Device(
        mac=mac,
        device_type=device_type,
        device_class=args.device_class,
        customer=args.customer,
        cpe_id=args.cpe_id,
        name=args.name,
    )
    async with pool.acquire() as connection:
        try:
            created = await InventoryRepository(connection, actor=audit.cli_actor()).upsert_device(
                device
            )
        except InventoryError as error:
            raise UsageError("; ".join(error.problems)) from None
    if not created:
        raise UsageError(f"{mac} is in the inventory already")
    await unknown.forget(UPDATE_SERVICE, [mac])
    print(f"{mac}: adopted for customer {args.customer} as {device_type} {args.device_class}")
    print(
        "note: `pbxfront inventory apply --prune` of the file owning this customer removes "
        "devices it does not list; add it there too (`pbxfront inventory export`)"
    )
    return 0


async def devices_certificates(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    """The certificate roll-out per device (protocol.md §9): state, issuer, expiry, error."""
    statuses = await RolloutRepository(pool).statuses(customer=args.customer)
    if args.json:
        print(json.dumps([s.as_json() for s in statuses], indent=2))
        return 0
    header = ("MAC", "HARDWARE ID", "CUSTOMER", "ROLL-OUT", "ISSUER", "EXPIRES", "UPDATED", "NOTE")
    rows: list[tuple[str, ...]] = [header]
    for s in statuses:
        r = s.rollout
        rows.append(
            (
                s.mac,
                s.hardware_id,
                s.customer,
                r.state if r else "-",
                (r.device_issuer or "-") if r else "-",
                f"{r.device_not_after:%Y-%m-%d}" if r and r.device_not_after else "-",
                _age(r.updated_at) if r else "-",
                _certificate_note(r),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


def _certificate_note(rollout: RolloutState | None) -> str:
    if rollout is None:
        return ""
    if rollout.state == "queued":
        # ca.signer: the UPDATED column is how long it has waited.
        return "request waits for the signing node (pbxfront ca queue)"
    return rollout.error or ""


async def devices_certificate_reset(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    mac = _mac(args.mac)
    repository = RolloutRepository(pool)
    if not await repository.statuses(mac=mac):
        raise UsageError(f"no device {mac} in the inventory")
    if await repository.reset(mac):
        print(f"{mac}: certificate roll-out reset; its next update poll starts over")
    else:
        print(f"{mac}: no certificate roll-out to reset")
    return 0


# --- firmware ----------------------------------------------------------------------------------


async def _audit_firmware_added(
    pool: asyncpg.Pool, object_id: str, replaced: str | None, after: dict[str, object]
) -> None:
    """The audit row of a stored firmware file (``replaced``: the SHA-256 it took over from)."""
    async with pool.acquire() as connection, connection.transaction():
        await audit.record(
            connection,
            actor=audit.cli_actor(),
            action="firmware.add",
            object_type="firmware",
            object_id=object_id,
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
    try:
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
    except FirmwareError as error:
        raise UsageError(str(error)) from None
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
            print(json.dumps([f.as_json() for f in files], indent=2))
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
        try:
            stored, replaced = await SharedFirmwareRepository(pool).store(
                item.path, sha256, size, item.build, item.name, by=_operator(), device_type=None
            )
        except FirmwareError as error:
            raise UsageError(str(error)) from None
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
    try:
        check_build(args.build)
        check_file_name(args.name)
    except FirmwareError as error:
        raise UsageError(str(error)) from None
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
        await audit.record(
            connection,
            actor=audit.cli_actor(),
            action="firmware.remove",
            object_type="firmware",
            object_id=f"{args.build}/{args.name}",
            before={"sha256": sha256},
        )
    print(f"firm/{args.build}/{args.name}: removed (sha256 {sha256})")
    if settings.update.firmware_source == "database":
        print(
            f"every node drops its cached copy at its next check (this node: {cache_dir(settings)})"
        )
    return 0


def register(
    commands: Any,
    common: argparse.ArgumentParser,
    bind: Bind,
    extra_checks: Sequence[ExtraCheck] = (),
) -> None:

    scripts = commands.add_parser("scripts", help="the update scripts (staging_scripts/)")
    script_actions = scripts.add_subparsers(dest="action", required=True)
    check = script_actions.add_parser(
        "check",
        parents=[common],
        help="render every script for every device; each problem once with the devices it affects",
    )
    check.add_argument("--json", action="store_true", help="every affected device, as JSON")
    check.set_defaults(handler=bind(functools.partial(scripts_check, extra_checks=extra_checks)))
    plan = script_actions.add_parser(
        "plan",
        parents=[common],
        help="which devices' scripts a pending tree changes (hash per device, diff)",
    )
    plan.add_argument(
        "--scripts", metavar="DIR", help="the pending tree (default: plan the live tree)"
    )
    plan.add_argument("--customer", metavar="ID", help="only this customer's devices")
    plan.add_argument("--diff", action="store_true", help="show each device's script diff")
    plan.add_argument("--base-url", metavar="URL", help="default: update.public_url")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=bind(scripts_plan))
    publish = script_actions.add_parser(
        "publish",
        parents=[common],
        help="check the scripts folder and make it the version every node serves",
    )
    publish.add_argument("--comment", help="why (shown by scripts versions)")
    publish.add_argument(
        "--staged",
        action="store_true",
        help="store the version without making it current (for pbxfront rollouts start)",
    )
    publish.set_defaults(
        handler=bind(functools.partial(scripts_publish, extra_checks=extra_checks))
    )
    versions = script_actions.add_parser(
        "versions", parents=[common], help="published versions; * marks the current one"
    )
    versions.add_argument("--limit", type=int, default=50, help="how many, newest first")
    versions.add_argument("--json", action="store_true", help="as JSON")
    versions.set_defaults(handler=bind(scripts_versions))
    rollback = script_actions.add_parser(
        "rollback", parents=[common], help="make a published version current again"
    )
    rollback.add_argument("version", type=int, metavar="VERSION", help="from scripts versions")
    rollback.set_defaults(handler=bind(scripts_rollback))
    render = script_actions.add_parser("render", parents=[common], help="what one device gets")
    render.add_argument("--device", required=True, metavar="MAC")
    render.add_argument("--phase", choices=(STAGING, UPDATE), default=UPDATE)
    render.add_argument("--explain", action="store_true", help="show each variable's layer")
    render.add_argument(
        "--claimed", action="store_true", help="as a device without certificate (secrets withheld)"
    )
    render.add_argument("--check", metavar="HASH", help="the device's CHECK value")
    render.add_argument("--prot", metavar="BUILD", help="the device's PROT value")
    render.add_argument("--boot", metavar="BUILD", help="the device's BOOT value")
    render.add_argument("--base-url", metavar="URL", help="default: update.public_url")
    render.set_defaults(handler=bind(scripts_render))
    from services.update import phpus

    phpus.register(script_actions, common)

    rollouts = commands.add_parser(
        "rollouts", help="canary roll-outs of a published script version, wave by wave"
    )
    rollout_actions = rollouts.add_subparsers(dest="action", required=True)
    start = rollout_actions.add_parser(
        "start", parents=[common], help="roll a published version out, wave by wave"
    )
    start.add_argument(
        "version", type=int, nargs="?", metavar="VERSION", help="a staged script version"
    )
    start.add_argument(
        "--firmware", metavar="TYPE", help="roll a firmware build out to this device type instead"
    )
    start.add_argument("--build", help="with --firmware: the build as devices report it")
    start.add_argument(
        "--kind", choices=("prot", "boot"), default="prot", help="firmware (prot) or boot code"
    )
    start.add_argument(
        "--wave",
        action="append",
        metavar="WAVE",
        help="mac:MAC[,MAC], customer:ID[,ID] or N%% (repeat, in order; the last is 100%%); "
        "default 10%%, 50%%, 100%%",
    )
    start.add_argument(
        "--soak", type=int, default=600, metavar="SECONDS", help="in sync for this long first"
    )
    start.add_argument(
        "--wave-timeout",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="halt when a wave is not back in sync within this",
    )
    start.set_defaults(handler=bind(rollouts_start))
    status = rollout_actions.add_parser("status", parents=[common], help="roll-outs, newest first")
    status.add_argument("--limit", type=int, default=10, help="how many")
    status.add_argument("--json", action="store_true", help="as JSON")
    status.set_defaults(handler=bind(rollouts_status))
    halt = rollout_actions.add_parser("halt", parents=[common], help="stop advancing")
    halt.add_argument("--reason", help="shown by rollouts status")
    halt.set_defaults(handler=bind(rollouts_halt))
    resume = rollout_actions.add_parser(
        "resume", parents=[common], help="watch the halted wave again"
    )
    resume.set_defaults(handler=bind(rollouts_resume))
    abort = rollout_actions.add_parser(
        "abort", parents=[common], help="end it: every device gets the version before again"
    )
    abort.set_defaults(handler=bind(rollouts_abort))
    step = rollout_actions.add_parser(
        "advance", parents=[common], help="check the open roll-out now (the service does it too)"
    )
    step.set_defaults(handler=bind(rollouts_advance))

    devices = commands.add_parser("devices", help="device status as seen by the update service")
    device_actions = devices.add_subparsers(dest="action", required=True)
    listing = device_actions.add_parser("list", parents=[common], help="status table")
    listing.add_argument(
        "--stale", action="store_true", help="only devices not seen for 3 poll intervals (or never)"
    )
    listing.add_argument("--customer", metavar="ID")
    listing.add_argument("--unknown", action="store_true", help="also devices not in the inventory")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=bind(devices_list))
    restage = device_actions.add_parser(
        "restage", parents=[common], help="send a device through staging again"
    )
    restage.add_argument("mac", metavar="MAC")
    restage.set_defaults(handler=bind(devices_restage))
    adopt = device_actions.add_parser(
        "adopt", parents=[common], help="add a device that polled but is not in the inventory"
    )
    adopt.add_argument("mac", metavar="MAC")
    adopt.add_argument("--customer", required=True)
    adopt.add_argument(
        "--class", dest="device_class", choices=("phone", "gateway", "pbx"), default="phone"
    )
    adopt.add_argument("--type", help="default: the type it polled with")
    adopt.add_argument("--cpe-id")
    adopt.add_argument("--name")
    adopt.set_defaults(handler=bind(devices_adopt))

    certificates = device_actions.add_parser(
        "certificates",
        parents=[common],
        help="certificate roll-out per device: state, issuer, expiry (see [ca] rollout)",
    )
    certificates.add_argument("--customer", metavar="ID")
    certificates.add_argument("--json", action="store_true")
    certificates.set_defaults(handler=bind(devices_certificates))
    certificate_reset = device_actions.add_parser(
        "certificate-reset",
        parents=[common],
        help="forget a device's roll-out (after an error or a refused request)",
    )
    certificate_reset.add_argument("mac", metavar="MAC")
    certificate_reset.set_defaults(handler=bind(devices_certificate_reset))

    firmware = commands.add_parser("firmware", help="the firmware store (firmware/firm/<build>/)")
    firmware_actions = firmware.add_subparsers(dest="action", required=True)
    add = firmware_actions.add_parser("add", parents=[common], help="add a firmware file")
    add.add_argument("file", metavar="FILE")
    add.add_argument("--build", required=True, help="the build as devices report it in PROT/BOOT")
    add.add_argument("--type", required=True, help="device type, e.g. IP232")
    add.add_argument(
        "--kind",
        choices=("prot", "boot"),
        default="prot",
        help="firmware (prot, default) or boot code (boot)",
    )
    add.add_argument(
        "--name", help="file name in the store (default ip<model>.bin/boot<model>.bin)"
    )
    add.set_defaults(handler=bind(firmware_add))
    listing = firmware_actions.add_parser(
        "list",
        parents=[common],
        help="files in the store (firmware_source = database: and which nodes have them cached)",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of lines")
    listing.set_defaults(handler=bind(firmware_list))
    importing = firmware_actions.add_parser(
        "import",
        parents=[common],
        help="store every file of this node's firmware_dir in the database (shared firmware)",
    )
    importing.set_defaults(handler=bind(firmware_import))
    remove = firmware_actions.add_parser(
        "remove", parents=[common], help="take a file out of the store (devices get 404)"
    )
    remove.add_argument("build", metavar="BUILD", help="the build folder, e.g. 13r2sr7")
    remove.add_argument("name", metavar="FILE", help="the file name, e.g. ip232.bin")
    remove.set_defaults(handler=bind(firmware_remove))
