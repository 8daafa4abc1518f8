"""``pbxfront bench backups``: devices PUT their configurations, mostly unchanged."""

from __future__ import annotations

from typing import Any

from services.bench.environment import (
    BenchOptions,
    device_hardware_id,
    device_load,
    environment,
)
from services.bench.load import Call, LoadSpec
from services.bench.measure import Row, compare, measure


def bench_config(index: int, size: int = 50_000, variant: int = 0) -> bytes:
    """A device configuration of about ``size`` bytes in the innovaphone text form."""
    lines = [f"config change CMD0 /name {device_hardware_id(index)}"]
    number = 0
    while sum(len(line) + 2 for line in lines) < size:
        lines.append(
            f"mod cmd FLASHDIR0 add-item 101 (cn=user{number})(h323=user{number})"
            f'(e164={1000 + number})(pbx=<user filter="normal" cd-filter="normal"/>)'
        )
        number += 1
    lines.append(f"config change NTP0 /server 192.0.2.{10 + variant}")
    return ("\r\n".join(lines) + "\r\n").encode()


def scenario_backups(options: BenchOptions, log: Any) -> list[Row]:
    """Devices PUT 50 KB configurations over kept-alive connections; 90 % are unchanged, 10 %
    alternate between two versions (a new version each time). Baseline: the no-op PUT."""
    rows: list[Row] = []
    with environment(options, log) as env:
        calls: list[Call] = []
        noop: list[Call] = []
        for index in range(options.devices):
            certificate = env.certificates.device_certificates[index]
            path = f"/DRIVE/CF0/update/backup/{device_hardware_id(index)}.txt"
            variants = 2 if index % 10 == 0 else 1
            for variant in range(variants):
                body = bench_config(index, variant=variant)
                calls.append(Call(path, certificate, "PUT", body))
                noop.append(Call("/noop", certificate, "PUT", body))

        def spec(calls_: list[Call]) -> LoadSpec:
            return device_load(env, env.pbxfront[2048], calls_, keepalive=True)

        log("backups: 50 KB PUTs over kept-alive connections, 90 % unchanged:")
        baseline = measure(env, "pbxfront no-op PUT, keep-alive", "pbxfront", spec(noop), log)
        rows.append(baseline)
        backups = measure(env, "pbxfront backup PUT, keep-alive", "pbxfront", spec(calls), log)
        rows.append(compare(backups, baseline, 0.7))
    return rows
