"""``pbxfront frontend plan|check``: the Frontend plan and its violations, from the inventory."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.core.commands import JSON, Bind, Commands, argument, device_mac, print_json
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.inventory import Inventory
from services.frontend.backups import Finding, backup_targets, check_backups
from services.frontend.plan import (
    FrontendPlan,
    UnknownFrontend,
    build_plan,
    plan_csv,
    plan_json,
    plan_text,
)
from services.frontend.repository import FrontendRepository, NewFinding


def _plan(inventory: Inventory, frontend: str, settings: Settings) -> FrontendPlan:
    try:
        return build_plan(inventory, frontend, settings.frontend_plan)
    except UnknownFrontend:
        known = ", ".join(f.id for f in inventory.frontends) or "none"
        raise UsageError(f"no Frontend {frontend} in the inventory (known: {known})") from None


async def frontend_plan(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        inventory = await FrontendRepository(connection).inventory()
    plan = _plan(inventory, args.frontend or settings.frontend, settings)
    if args.format == "json":
        text = json.dumps(plan_json(plan, show_secrets=args.show_secrets), indent=2) + "\n"
    elif args.format == "csv":
        text = plan_csv(plan, show_secrets=args.show_secrets)
    else:
        text = plan_text(plan, show_secrets=args.show_secrets)
    sys.stdout.write(text)
    return 0


async def plan_problems(settings: Settings, pool: asyncpg.Pool) -> list[str]:
    """Every violation of every Frontend's plan, one line each (also run by `scripts check`)."""
    async with pool.acquire() as connection:
        inventory = await FrontendRepository(connection).inventory()
    return [
        f"frontend {frontend.id}: {violation}"
        for frontend in inventory.frontends
        for violation in build_plan(inventory, frontend.id, settings.frontend_plan).violations
    ]


async def backup_findings(
    settings: Settings, pool: asyncpg.Pool, frontends: list[str] | None = None
) -> list[tuple[str, Finding]]:
    """(Frontend id, finding) for the latest stored backups of the Frontends' gateways and
    customer PBXs."""
    async with pool.acquire() as connection:
        repository = FrontendRepository(connection)
        inventory = await repository.inventory()
        findings: list[tuple[str, Finding]] = []
        for frontend in inventory.frontends:
            if frontends is not None and frontend.id not in frontends:
                continue
            plan = build_plan(inventory, frontend.id, settings.frontend_plan)
            macs = [mac for mac, _, _ in backup_targets(plan, inventory)]
            if plan.frontend_mac:
                macs.append(plan.frontend_mac)
            backups = await repository.latest_backups(macs)
            builds = await repository.reported_builds(macs)
            findings += [
                (frontend.id, f)
                for f in check_backups(plan, inventory, backups, settings.frontend_plan, builds)
            ]
    return findings


async def record_findings(
    pool: asyncpg.Pool, findings: list[tuple[str, Finding]], now: datetime
) -> int:
    """Record the findings about stored versions once each; new ones become drift alerts
    (events, syslog). How many were new."""
    new = 0
    async with pool.acquire() as connection:
        repository = FrontendRepository(connection)
        for frontend in sorted({f for f, _ in findings}):
            batch = [
                NewFinding(
                    f.mac,
                    f.hardware_id,
                    f.customer,
                    f.version_id,
                    f.code,
                    f"{f.device}: {f.message} [{f.code}]",
                )
                for fid, f in findings
                if fid == frontend and f.version_id is not None and f.mac
            ]
            new += len(await repository.record_findings(frontend, batch, now))
    return new


async def frontend_check(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        inventory = await FrontendRepository(connection).inventory()
    ids = [args.frontend] if args.frontend else [f.id for f in inventory.frontends]
    problems: list[str] = []
    for frontend in ids:
        plan = _plan(inventory, frontend, settings)
        problems += [f"frontend {frontend}: {v}" for v in plan.violations]
    findings: list[tuple[str, Finding]] = []
    if args.record and not args.backups:
        raise UsageError("--record needs --backups")
    if args.backups:
        findings = await backup_findings(settings, pool, ids)
    for line in problems:
        print(line)
    for _, finding in findings:
        print(f"backup: {finding}")
    if args.record:
        new = await record_findings(pool, findings, datetime.now(UTC))
        print(f"recorded {new} new finding(s) as backup alerts", file=sys.stderr)
    total = len(problems) + len(findings)
    if total:
        print(f"{total} problem(s)", file=sys.stderr)
        return 1
    checked = " and their backups" if args.backups else ""
    print(f"ok: {len(ids)} Frontend plan(s){checked} without violations")
    return 0


async def frontend_findings(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    if not 1 <= args.limit <= 10000:
        raise UsageError("--limit: must be 1..10000")
    mac = device_mac(args.device) if args.device else None
    async with pool.acquire() as connection:
        findings = await FrontendRepository(connection).findings(args.frontend, mac, args.limit)
    if args.json:
        print_json(findings)
        return 0
    for finding in findings:
        stamp = finding.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{stamp}  {finding.frontend}  {finding.mac}  v{finding.version_id}  {finding.message}"
        )
    if not findings:
        print("no findings recorded")
    return 0


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    frontend = Commands(commands, common, bind).group(
        "frontend", "the Frontend plan: NAT maps, SessionBorder objects, budgets"
    )
    frontend.add(
        "plan",
        frontend_plan,
        "the Frontend's NAT maps, SessionBorder objects, budget",
        argument("--frontend", metavar="ID", help="default: the setting frontend"),
        argument("--format", choices=("text", "json", "csv"), default="text", help="output format"),
        argument(
            "--show-secrets",
            action="store_true",
            help="show the SessionBorder passwords (customer registration passwords)",
        ),
    )
    frontend.add(
        "check",
        frontend_check,
        "name every violation of the plan (exit 1 if any)",
        argument("--frontend", metavar="ID", help="default: every Frontend"),
        argument(
            "--backups",
            action="store_true",
            help="also check the latest stored backups of the Frontend gateway and customer PBXs",
        ),
        argument(
            "--record",
            action="store_true",
            help="with --backups: record each finding once per backup version as a drift alert "
            "(an event and a syslog message); for a timer",
        ),
    )
    frontend.add(
        "findings",
        frontend_findings,
        "backup findings recorded by check --backups --record",
        argument("--frontend", metavar="ID"),
        argument("--device", metavar="MAC", help="only this device's findings"),
        argument("--limit", type=int, default=100),
        JSON,
    )
