"""``pbxfront bench storm``: every device fetches staging.txt once, as after a power cut; with
``--tls-resumption`` also the storm of devices reconnecting with their session after a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from services.bench.environment import BenchOptions, Environment, environment
from services.bench.load import LoadSpec, Target, run_resumed_storm
from services.bench.measure import Row, compare, cpu_seconds, measure
from services.bench.polls import fetch_reply, poll_calls, publish_static


def scenario_storm(options: BenchOptions, log: Any) -> list[Row]:
    """Every device fetches staging.txt once, as after a power cut; goal: all within 60 s."""
    rows: list[Row] = []
    with environment(options, log) as env:
        calls = poll_calls(env, options.devices, check=False, script="staging.txt")
        publish_static(env, "staging.txt", fetch_reply(env, calls[0]))

        def spec(target: Target) -> LoadSpec:
            return LoadSpec(
                target,
                calls,
                key=env.certificates.device_key,
                duration=3600,
                processes=options.process_count,
                concurrency=options.concurrency,
                once=True,
            )

        log(f"storm: {options.devices} devices fetch staging.txt once, RSA 4096 server key:")
        baseline = None
        if env.nginx_targets:
            baseline = measure(
                env, "nginx static staging.txt", "nginx", spec(env.nginx_targets[4096]), log
            )
            rows.append(baseline)
        storm = measure(
            env,
            f"pbxfront storm, {options.devices} devices",
            "pbxfront",
            spec(env.pbxfront[4096]),
            log,
        )
        compare(storm, baseline, None)
        storm.goal = "all within 60 s, 0 errors"
        storm.met = (
            storm.result.errors == 0
            and storm.result.requests == options.devices
            and storm.result.elapsed <= 60.0
        )
        rows.append(storm)
        if options.resume:
            rows.extend(_resumed_storms(env, spec, log))
    return rows


def _resumed_storms(env: Environment, spec: Callable[[Target], LoadSpec], log: Any) -> list[Row]:
    """Issue 18: every device polled once before and offers its TLS session when it reconnects
    after the server restarted. nginx keeps its sessions through its ticket key file, pbxfront
    through the ticket keys it shares in PostgreSQL (core/ticketstore.py). The same storm
    without a restart shows what the restart itself costs."""
    devices = env.options.devices
    log(f"storm after a restart: {devices} devices reconnect offering their TLS session:")
    rows: list[Row] = []
    baseline = None
    if env.nginx_targets:
        baseline = measure_storm(
            env,
            "nginx static staging.txt after a restart, resumed TLS",
            "nginx",
            spec(env.nginx_targets[4096]),
            env.restart_nginx,
            log,
        )
        rows.append(baseline)
    restarted = measure_storm(
        env,
        f"pbxfront storm after a restart, {devices} devices, resumed TLS",
        "pbxfront",
        spec(env.pbxfront[4096]),
        env.restart_pbxfront,
        log,
    )
    compare(restarted, baseline, None)
    restarted.goal = "all within 15 s, 0 errors"
    restarted.met = (
        restarted.result.errors == 0
        and restarted.result.requests == devices
        and restarted.result.elapsed <= 15.0
    )
    rows.append(restarted)
    rows.append(
        compare(
            measure_storm(
                env,
                f"pbxfront storm, {devices} devices, resumed TLS, no restart",
                "pbxfront",
                spec(env.pbxfront[4096]),
                lambda: None,
                log,
            ),
            baseline,
            None,
        )
    )
    return rows


def measure_storm(
    env: Environment,
    name: str,
    which: str,
    spec: LoadSpec,
    restart: Callable[[], None],
    log: Any,
) -> Row:
    """``run_resumed_storm``; the server CPU is counted from the restart on."""
    mark: list[float] = []

    def restart_and_mark() -> None:
        restart()
        mark[:] = [cpu_seconds(env.server_processes(which)), time.monotonic()]

    result = run_resumed_storm(spec, restart_and_mark)
    cpu_before, started = mark
    wall = time.monotonic() - started
    cpu = (cpu_seconds(env.server_processes(which)) - cpu_before) / wall if wall else 0.0
    log(
        f"  {name}: {result.requests:,} in {result.elapsed:.1f} s, {result.errors} errors, "
        f"{result.resumed:,} of {result.offered:,} sessions resumed"
    )
    return Row(name, result, cpu)
