"""``pbxfront rollouts …``: canary roll-outs of a script version or a firmware build."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import asyncpg

from services.core import errors
from services.core.commands import Commands, argument, record_audit, usage_errors
from services.core.config import Settings
from services.core.errors import UsageError
from services.update.canary import CanaryRepository, Rollout, advance, parse_waves
from services.update.cli.common import _operator, _stores
from services.update.firmware import firmware_file_name


async def rollouts_start(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    _store, firmware = await _stores(settings, pool)
    if (args.version is None) == (args.firmware is None):
        raise UsageError("give a script VERSION, or --firmware TYPE --build BUILD")
    if args.firmware is not None and not args.build:
        raise UsageError("--firmware needs --build (as devices report it in PROT/BOOT)")
    with usage_errors(errors.Invalid, errors.NotFound, errors.Conflict):
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
            await record_audit(
                connection, "rollout.start", "rollout", str(rollout.id), after=rollout.as_json()
            )
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
    await record_audit(
        connection,
        action,
        "rollout",
        str(rollout.id),
        before={"state": rollout.state},
        after={"state": state},
    )


def register(update: Commands) -> None:
    """The ``pbxfront rollouts …`` sub-commands."""
    rollouts = update.group(
        "rollouts", "canary roll-outs of a published script version, wave by wave"
    )
    rollouts.add(
        "start",
        rollouts_start,
        "roll a published version out, wave by wave",
        argument("version", type=int, nargs="?", metavar="VERSION", help="a staged script version"),
        argument(
            "--firmware",
            metavar="TYPE",
            help="roll a firmware build out to this device type instead",
        ),
        argument("--build", help="with --firmware: the build as devices report it"),
        argument(
            "--kind", choices=("prot", "boot"), default="prot", help="firmware (prot) or boot code"
        ),
        argument(
            "--wave",
            action="append",
            metavar="WAVE",
            help="mac:MAC[,MAC], customer:ID[,ID] or N%% (repeat, in order; the last is 100%%); "
            "default 10%%, 50%%, 100%%",
        ),
        argument(
            "--soak", type=int, default=600, metavar="SECONDS", help="in sync for this long first"
        ),
        argument(
            "--wave-timeout",
            type=int,
            default=3600,
            metavar="SECONDS",
            help="halt when a wave is not back in sync within this",
        ),
    )
    rollouts.add(
        "status",
        rollouts_status,
        "roll-outs, newest first",
        argument("--limit", type=int, default=10, help="how many"),
        argument("--json", action="store_true", help="as JSON"),
    )
    rollouts.add(
        "halt",
        rollouts_halt,
        "stop advancing",
        argument("--reason", help="shown by rollouts status"),
    )
    rollouts.add("resume", rollouts_resume, "watch the halted wave again")
    rollouts.add("abort", rollouts_abort, "end it: every device gets the version before again")
    rollouts.add(
        "advance", rollouts_advance, "check the open roll-out now (the service does it too)"
    )
