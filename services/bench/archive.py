"""``pbxfront bench archive``: operators list and diff versions of a large backup archive."""

from __future__ import annotations

import base64
import dataclasses
import random
import secrets
from typing import Any

import asyncpg

from services.bench import seed
from services.bench.environment import (
    BenchOptions,
    add_operator,
    device_hardware_id,
    device_mac,
    environment,
    listener,
    with_connection,
)
from services.bench.load import Call, LoadSpec, run_load
from services.bench.measure import Row, fixed_rate, measure


def scenario_archive(options: BenchOptions, log: Any) -> list[Row]:
    """Operators list and diff one device's versions through the admin API while the archive
    holds ``options.devices`` x ``options.versions`` versions."""
    devices = [
        (device_mac(i), device_hardware_id(i), f"Bench{i // 100:05d}")
        for i in range(options.devices)
    ]
    password = secrets.token_urlsafe(18)
    admin = listener("admin", ["admin", "noop"], options)

    async def prepare(connection: asyncpg.Connection) -> None:
        await add_operator(connection, "bench", password)
        await seed.backup_archive(connection, devices, options.versions)

    total = options.devices * options.versions
    log(
        f"archive: loading {total:,} versions ({options.versions:,} on each of "
        f"{options.devices:,} devices) ..."
    )
    rows: list[Row] = []
    with environment(options, log, listeners=admin, prepare=prepare) as env:
        target = env.target("admin")
        credentials = base64.b64encode(f"bench:{password}".encode()).decode()
        auth = (f"Authorization: Basic {credentials}",)
        mac, hardware_id, _ = devices[len(devices) // 2]
        first, last = with_connection(env.dsn, lambda db: seed.version_range(db, mac))
        chooser = random.Random(2)  # noqa: S311 - which versions an operator looks at
        base = f"/api/v1/backups/devices/{hardware_id}"
        lists = [Call(f"{base}/versions?limit=100", headers=auth)] + [
            Call(f"{base}/versions?limit=100&before={chooser.randint(first, last)}", headers=auth)
            for _ in range(999)
        ]
        diffs = []
        for _ in range(1000):
            older = chooser.randint(first, last - 1)
            newer = chooser.randint(older + 1, last)
            diffs.append(Call(f"{base}/diff?from={older}&to={newer}", headers=auth))

        def spec(calls: list[Call]) -> LoadSpec:
            return LoadSpec(
                target,
                calls,
                duration=options.duration,
                processes=1,
                concurrency=4,
                keepalive=True,
                rate=options.rate,
            )

        # Each server process checks the password once (argon2, on purpose slow) and then
        # remembers it; that first check is not what is measured here.
        run_load(dataclasses.replace(spec(lists[:1]), duration=2.0, concurrency=8, rate=20.0))
        log(f"archive: {options.rate:,.0f} requests/s over kept-alive connections:")
        baseline = measure(
            env, f"pbxfront no-op at {options.rate:,.0f}/s", "pbxfront", spec([Call("/noop")]), log
        )
        rows.append(baseline)
        rows.append(
            fixed_rate(
                measure(env, "archive: list 100 versions", "pbxfront", spec(lists), log),
                options.rate,
                200.0,
            )
        )
        rows.append(
            fixed_rate(
                measure(env, "archive: diff two versions", "pbxfront", spec(diffs), log),
                options.rate,
                300.0,
            )
        )
    return rows
