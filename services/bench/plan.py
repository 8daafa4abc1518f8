"""``pbxfront bench plan``: ``pbxfront scripts plan`` over a large fleet (issue 15: 10,000
devices in at most 10 s).

The scenario seeds its own embedded PostgreSQL (``<data_dir>/bench/plan``) with ``devices``
devices spread over customers of 50 (four device types, customer variables including a secret
one, a device variable on every fifth device, a poll status with the hash each device was last
sent), writes a live script tree (the configured ``update.scripts_dir`` plus a ``set-<customer>``
file per customer using customer, device and update variables) and a pending copy in which every
tenth customer's file changes, and then times, in the same run:

- the baseline: rendering every device's update script from the live tree once, without
  comparing anything (what a fleet of polls costs the server at the least);
- ``scripts plan`` against the pending tree through the code path the CLI runs
  (:func:`services.update.cli.compute_plan`: database reads, both trees, hashes, diffs).

Each is run ``repeats`` times; the table shows the median and the slowest run. The goal is met
when the slowest plan takes at most :data:`GOAL_SECONDS`. The plan must list exactly the devices
of the changed customers, or the run fails: a fast wrong answer is no result.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from services.bench.environment import BENCH_VARIABLES
from services.bench.measure import aligned
from services.core.config import DatabaseSettings, Settings, load_settings
from services.core.db import EmbeddedPostgres, create_pool, migrate
from services.core.inventory import Customer, Device, Frontend, Inventory, Variable, apply_inventory

GOAL_SECONDS = 10.0
DEVICES_PER_CUSTOMER = 50
# Every CHANGED_EVERY-th customer's script changes in the pending tree.
CHANGED_EVERY = 10
DEVICE_TYPES = ("IP232", "IP222", "IP112", "IP241")
PUBLIC_URL = "https://frontend.bench.invalid"

LIVE_CUSTOMER_SCRIPT = """\
config change PHONE /name {{ device.cpe_id or device.hardware_id }}
config change H323 /gk-id {{ customer.system_name }} /gk-pwd {{ customer.registration_password }}
config change DIAL /prefix #(bench-dial) /area {{ customer.area_code }}
{% if device.type == "IP232" %}config change PHONE /key-layout #(bench-keys)
{% endif %}"""
# The pending change: one more line for every device of the customer.
PENDING_CUSTOMER_SCRIPT = LIVE_CUSTOMER_SCRIPT + "config change NTP /server #(h-ntp) /poll 3600\n"


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: list[float]
    goal: str = ""
    met: bool | None = None
    baseline: str | None = None
    ratio: float | None = None
    detail: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def slowest(self) -> float:
        return max(self.seconds)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runs": len(self.seconds),
            "seconds": [round(s, 3) for s in self.seconds],
            "median_seconds": round(self.median, 3),
            "slowest_seconds": round(self.slowest, 3),
            "baseline": self.baseline,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "goal": self.goal,
            "met": self.met,
            "detail": self.detail,
        }


def customer_id(index: int) -> str:
    return f"Plan{index:05d}"


def plan_inventory(devices: int) -> Inventory:
    """``devices`` devices over customers of :data:`DEVICES_PER_CUSTOMER`, with variables on
    every layer the plan resolves."""
    customers = max(1, (devices + DEVICES_PER_CUSTOMER - 1) // DEVICES_PER_CUSTOMER)
    variables = [
        *BENCH_VARIABLES,
        Variable("global", "", "bench-dial", "0"),
        Variable("device_type", "IP232", "bench-keys", "standard"),
    ]
    for c in range(customers):
        variables.append(Variable("customer", customer_id(c), "bench-dial", str(c % 10)))
        variables.append(
            Variable("customer", customer_id(c), "pbx-password", f"secret-{c:05d}", secret=True)
        )
    device_rows = []
    for i in range(devices):
        mac = f"0090{(i + 1):08x}"
        customer = customer_id(i // DEVICES_PER_CUSTOMER)
        device_rows.append(
            Device(
                mac=mac,
                device_type=DEVICE_TYPES[i % len(DEVICE_TYPES)],
                device_class="phone",
                customer=customer,
                cpe_id=f"{customer}-{i % DEVICES_PER_CUSTOMER:03d}",
            )
        )
        if i % 5 == 0:
            variables.append(Variable("device", mac, "bench-keys", f"layout-{i % 7}"))
    return Inventory(
        frontends=(Frontend("sb1", "192.0.2.10", "10.0.0.10", 1),),
        customers=tuple(
            Customer(
                id=customer_id(c),
                frontend="sb1",
                name=f"Plan customer {c}",
                system_name=f"plan{c}.example",
                country_code="49",
                area_code=str(7000 + c % 100),
                registration_password=f"registration-{c:05d}",
            )
            for c in range(customers)
        ),
        devices=tuple(device_rows),
        variables=tuple(variables),
    )


def write_trees(base: Path, work_dir: Path, customers: int) -> tuple[Path, Path]:
    """The live and the pending tree (blocking): ``base`` plus a file per customer."""
    live, pending = work_dir / "live", work_dir / "pending"
    for tree in (live, pending):
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(base, tree)
    for c in range(customers):
        name = f"set-{customer_id(c)}.txt"
        (live / name).write_text(LIVE_CUSTOMER_SCRIPT)
        changed = c % CHANGED_EVERY == 0
        (pending / name).write_text(PENDING_CUSTOMER_SCRIPT if changed else LIVE_CUSTOMER_SCRIPT)
    return live, pending


async def seed(pool: asyncpg.Pool, devices: int) -> None:
    """The inventory and a poll status per device (update phase, in sync, builds reported)."""
    async with pool.acquire() as connection:
        await migrate(connection)
        await apply_inventory(connection, plan_inventory(devices))
        await connection.execute("DELETE FROM device_status")
        await connection.execute(
            """
            INSERT INTO device_status (mac, proof, phase, prot, boot, hash_sent, in_sync)
            SELECT mac, 'proven', 'update', '131400', '131400', md5(mac), true FROM devices
            """
        )


def _settings(dsn: str, live: Path, firmware: Path) -> Settings:
    return load_settings(
        overrides={
            "database": {"url": dsn},
            "update": {
                "scripts_dir": str(live),
                "firmware_dir": str(firmware),
                "public_url": PUBLIC_URL,
            },
        }
    )


async def _baseline(settings: Settings, pool: asyncpg.Pool) -> int:
    """Render every device's update script from the live tree once; how many rendered."""
    from services.update.cli.common import _snapshot, _stores
    from services.update.plan import device_context, render_update
    from services.update.provisioning import Urls

    store, _firmware = await _stores(settings, pool)
    snapshot = await _snapshot(pool)
    urls = Urls(PUBLIC_URL)

    def render_all() -> int:
        for device in snapshot.inventory.devices:
            context, variables = device_context(
                snapshot, device, urls, settings.update.poll_interval
            )
            render_update(store, context, variables)
        return len(snapshot.inventory.devices)

    return await asyncio.to_thread(render_all)


async def _measure(
    settings: Settings, pool: asyncpg.Pool, pending: Path, repeats: int, expected: set[str]
) -> tuple[list[float], list[float], int]:
    from services.update.cli import compute_plan

    baseline: list[float] = []
    planned: list[float] = []
    devices = 0
    for _ in range(repeats):
        started = time.perf_counter()
        devices = await _baseline(settings, pool)
        baseline.append(time.perf_counter() - started)
        started = time.perf_counter()
        plan, _pending = await compute_plan(settings, pool, scripts=pending)
        planned.append(time.perf_counter() - started)
        changed = {change.device.customer for change in plan.changes}
        if plan.devices != devices or changed != expected or plan.problems:
            raise RuntimeError(
                f"the plan is wrong: {plan.summary()}, changed customers "
                f"{sorted(changed)[:5]}…, expected {sorted(expected)[:5]}…"
            )
        if not all(change.diff for change in plan.changes):
            raise RuntimeError("the plan lacks a device's diff")
    return baseline, planned, devices


def scenario_plan(
    work_dir: Path, scripts_dir: Path, devices: int, repeats: int, log: Callable[[str], None]
) -> list[Timing]:
    plan_dir = work_dir / "plan"
    plan_dir.mkdir(parents=True, exist_ok=True)
    customers = max(1, (devices + DEVICES_PER_CUSTOMER - 1) // DEVICES_PER_CUSTOMER)
    live, pending = write_trees(scripts_dir, plan_dir, customers)
    firmware = plan_dir / "firmware"
    firmware.mkdir(exist_ok=True)
    expected = {customer_id(c) for c in range(0, customers, CHANGED_EVERY)}
    embedded = EmbeddedPostgres(plan_dir)
    dsn = embedded.start()
    try:

        async def run() -> tuple[list[float], list[float], int]:
            pool = await create_pool(dsn, DatabaseSettings(command_timeout=1800))
            try:
                started = time.monotonic()
                await seed(pool, devices)
                log(f"database ready: {devices} devices ({time.monotonic() - started:.1f} s)")
                return await _measure(
                    _settings(dsn, live, firmware), pool, pending, repeats, expected
                )
            finally:
                await pool.close()

        baseline, planned, count = asyncio.run(run())
    finally:
        embedded.stop()
    changed = sum(
        min(DEVICES_PER_CUSTOMER, devices - c * DEVICES_PER_CUSTOMER)
        for c in range(0, customers, CHANGED_EVERY)
    )
    base = Timing(
        f"render live update.txt, {count} devices",
        baseline,
        detail="one render per device, no diff",
    )
    plan = Timing(
        f"scripts plan, {count} devices",
        planned,
        goal=f"<= {GOAL_SECONDS:g} s",
        met=max(planned) <= GOAL_SECONDS,
        baseline=base.name,
        ratio=statistics.median(planned) / statistics.median(baseline),
        detail=f"{changed} devices of {len(expected)} customer(s) changed, with diffs",
    )
    return [base, plan]


def render_table(rows: Sequence[Timing]) -> str:
    header = ("scenario", "median s", "slowest s", "runs", "vs baseline", "goal", "")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        verdict = "" if row.met is None else ("met" if row.met else "NOT MET")
        ratio = f"{row.ratio:.2f}x {row.baseline}" if row.ratio is not None else ""
        lines.append(
            (
                row.name,
                f"{row.median:.2f}",
                f"{row.slowest:.2f}",
                str(len(row.seconds)),
                ratio,
                row.goal,
                verdict,
            )
        )
    return aligned(lines)


def run_plan_scenario(
    work_dir: Path, scripts_dir: Path, devices: int, repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """The report ``pbxfront bench`` prints and stores (the shape of the other scenarios')."""
    from services.bench.measure import machine_description

    rows = scenario_plan(work_dir, scripts_dir, devices, repeats, log)
    return {
        "scenario": "plan",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "options": {"devices": devices, "repeats": repeats, "scripts_dir": str(scripts_dir)},
        "rows": [row.as_json() for row in rows],
        "table": render_table(rows),
    }
