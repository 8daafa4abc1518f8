"""``pbxfront bench redirect``: factory-new devices ask the redirect service for their Frontend."""

from __future__ import annotations

import random
from typing import Any

import asyncpg

from services.bench import seed
from services.bench.environment import BenchOptions, environment, listener
from services.bench.load import Call, LoadSpec
from services.bench.measure import Row, compare, fixed_rate, measure


def scenario_redirect(options: BenchOptions, log: Any) -> list[Row]:
    """Factory-new devices ask the redirect service (plain HTTP, a new connection each) for
    their Frontend, at a fixed rate, among ``options.mappings`` registered devices."""
    mappings = options.mappings
    plain = listener("redirect", ["redirect", "noop"])

    async def prepare(connection: asyncpg.Connection) -> None:
        await seed.redirect_mappings(connection, mappings)

    rows: list[Row] = []
    log(f"redirect: loading {mappings:,} mappings ...")
    with environment(options, log, listeners=plain, prepare=prepare) as env:
        target = env.target("redirect")
        chooser = random.Random(1)  # noqa: S311 - which devices ask, not a secret
        lookups = [
            Call(f"/redirect.php?sn={seed.redirect_mac(chooser.randrange(mappings))}")
            for _ in range(20_000)
        ]
        # Calls are shared out between generator processes: one each at least.
        noop = [Call("/noop")] * 64

        def spec(calls: list[Call], rate: float | None) -> LoadSpec:
            return LoadSpec(
                target,
                calls,
                duration=options.duration,
                processes=options.process_count,
                concurrency=options.concurrency,
                rate=rate,
            )

        rate = options.rate
        log(f"redirect lookups, new connection each, at a fixed {rate:,.0f}/s and flat out:")
        baseline = measure(
            env, f"pbxfront no-op at {rate:,.0f}/s", "pbxfront", spec(noop, rate), log
        )
        rows.append(baseline)
        rows.append(
            fixed_rate(
                measure(
                    env,
                    f"pbxfront redirect at {rate:,.0f}/s, {mappings:,} mappings",
                    "pbxfront",
                    spec(lookups, rate),
                    log,
                ),
                rate,
                5.0,
            )
        )
        flat_noop = measure(env, "pbxfront no-op, flat out", "pbxfront", spec(noop, None), log)
        rows.append(flat_noop)
        rows.append(
            compare(
                measure(env, "pbxfront redirect, flat out", "pbxfront", spec(lookups, None), log),
                flat_noop,
                None,
            )
        )
    return rows
