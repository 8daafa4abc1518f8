"""Measuring a scenario: its rows (a load run against a baseline and a goal) and their table."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from services.bench.environment import Environment
from services.bench.ldap import LdapLoad, run_ldap_load
from services.bench.load import LoadResult, LoadSpec, run_load


@dataclass
class Row:
    name: str
    result: LoadResult
    server_cpu: float  # cores busy on the server side during the run
    baseline: str | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.result.requests,
            "errors": self.result.errors,
            "seconds": round(self.result.elapsed, 3),
            "requests_per_second": round(self.result.rate, 1),
            "p50_ms": round(self.result.percentile(0.50), 2),
            "p95_ms": round(self.result.percentile(0.95), 2),
            "p99_ms": round(self.result.percentile(0.99), 2),
            "statuses": {str(k): v for k, v in sorted(self.result.statuses.items())},
            "resumed_tls_sessions": self.result.resumed,
            "offered_tls_sessions": self.result.offered,
            "error_samples": self.result.error_samples,
            "server_cpu_cores": round(self.server_cpu, 2),
            "baseline": self.baseline,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "goal": self.goal,
            "met": self.met,
        }


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measure(env: Environment, name: str, which: str, spec: LoadSpec | LdapLoad, log: Any) -> Row:
    processes = env.server_processes(which)
    before = cpu_seconds(processes)
    started = time.monotonic()
    result = run_ldap_load(spec) if isinstance(spec, LdapLoad) else run_load(spec)
    wall = time.monotonic() - started
    cpu = (cpu_seconds(env.server_processes(which)) - before) / wall if wall else 0.0
    row = Row(name, result, cpu)
    resumed = ""
    if result.offered:
        resumed = f", {result.resumed:,} of {result.offered:,} sessions resumed"
    log(
        f"  {name}: {result.rate:,.0f}/s, p99 {result.percentile(0.99):.1f} ms, "
        f"{result.errors} errors{resumed}"
    )
    return row


def compare(row: Row, baseline: Row | None, goal: float | None) -> Row:
    if baseline is None or not baseline.result.rate:
        return row
    row.baseline = baseline.name
    row.ratio = row.result.rate / baseline.result.rate
    if goal is not None:
        row.goal = f">= {goal:.1f}x"
        row.met = row.ratio >= goal and row.result.errors == 0
    return row


def fixed_rate(row: Row, rate: float, p99_ms: float) -> Row:
    row.goal = f"p99 <= {p99_ms:g} ms"
    row.met = (
        row.result.percentile(0.99) <= p99_ms
        and row.result.errors == 0
        and row.result.rate >= 0.95 * rate
    )
    return row


def render_table(rows: Sequence[Row]) -> str:
    header: tuple[str, ...] = (
        "scenario",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "srv cpu",
        "vs baseline",
        "goal",
        "",
    )
    # Where sessions were offered for resumption, the share resumed (before the goal).
    resuming = any(row.result.offered for row in rows)
    if resuming:
        header = (*header[:-2], "resumed", *header[-2:])
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        result = row.result
        verdict = "" if row.met is None else ("met" if row.met else "NOT MET")
        ratio = f"{row.ratio:.2f}x {row.baseline}" if row.ratio is not None else ""
        cells: tuple[str, ...] = (
            row.name,
            f"{result.rate:,.0f}",
            f"{result.percentile(0.5):.1f}",
            f"{result.percentile(0.95):.1f}",
            f"{result.percentile(0.99):.1f}",
            str(result.errors),
            f"{row.server_cpu:.2f}",
            ratio,
        )
        if resuming:
            cells = (*cells, f"{result.resumed_share:.1%}" if result.offered else "")
        lines.append((*cells, row.goal, verdict))
    return aligned(lines)


def aligned(lines: Sequence[tuple[str, ...]]) -> str:
    """Rows of cells as a plain-text table, each column as wide as its widest cell."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    )


def machine_description() -> str:
    import platform

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores ({model or platform.machine()}), {memory:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
