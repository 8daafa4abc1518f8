"""``pbxfront bench <scenario>``: measure a Frontend on this machine against baselines."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.core.config import Settings

DEFAULT_DEVICES = {
    "polls": 1000,
    "storm": 10000,
    "backups": 1000,
    "redirect": 100,
    "archive": 100,
    "contacts": 100,
    "directory": 100,
    "events": 1000,
    "console": 100_000,
    "plan": 10000,
}
# Requests per second of each scenario's fixed-rate runs.
DEFAULT_RATE = {
    "polls": 1000.0,
    "storm": 0.0,
    "backups": 0.0,
    "redirect": 2000.0,
    "archive": 20.0,
    "contacts": 0.0,
    "directory": 500.0,
    "events": 0.0,
    "console": 20.0,
    "plan": 0.0,
}


def register(
    commands: Any,
    common: argparse.ArgumentParser,
    settings_of: Callable[[argparse.Namespace], Settings],
) -> None:
    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="load a local Frontend with simulated devices, next to nginx and a no-op baseline",
    )
    bench.add_argument("scenario", choices=tuple(DEFAULT_DEVICES))
    bench.add_argument("--devices", type=int, help="simulated devices (polls 1000, storm 10000)")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    bench.add_argument("--workers", type=int, default=0, help="server processes (0 = per core)")
    bench.add_argument(
        "--processes", type=int, default=0, help="load generator processes (0 = per core)"
    )
    bench.add_argument("--concurrency", type=int, default=32, help="clients per generator process")
    bench.add_argument(
        "--rate",
        type=float,
        help="requests/s of the fixed-rate runs (polls 1000, redirect 2000, archive 20)",
    )
    bench.add_argument(
        "--mappings", type=int, default=1_000_000, help="redirect: registered devices"
    )
    bench.add_argument(
        "--contacts",
        type=int,
        help="contacts: rows of the uploaded export (50000); directory: per customer (5000)",
    )
    bench.add_argument(
        "--customers", type=int, default=100, help="directory: customers with contacts"
    )
    bench.add_argument(
        "--versions", type=int, default=10_000, help="archive: versions per device (of --devices)"
    )
    bench.add_argument("--repeats", type=int, default=3, help="plan: runs of each measurement")
    bench.add_argument("--no-nginx", action="store_true", help="skip the nginx baseline")
    bench.add_argument(
        "--tls-resumption",
        action="store_true",
        help="polls: also measure new connections that resume the device's TLS session; "
        "storm: also the storm of devices that reconnect with their session after a restart",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the results here")

    def handler(args: argparse.Namespace) -> int:
        from services.bench.environment import BenchOptions
        from services.bench.scenarios import run_scenario

        settings = settings_of(args)
        options = BenchOptions(
            work_dir=(settings.data_dir / "bench").resolve(),
            scripts_dir=settings.update.scripts_dir.resolve(),
            devices=args.devices or DEFAULT_DEVICES[args.scenario],
            duration=args.duration,
            workers=args.workers,
            processes=args.processes,
            concurrency=args.concurrency,
            rate=args.rate or DEFAULT_RATE[args.scenario] or 1000.0,
            mappings=args.mappings,
            versions=args.versions,
            contacts=args.contacts or (5_000 if args.scenario == "directory" else 50_000),
            directory_customers=args.customers,
            resume=args.tls_resumption,
            nginx=not args.no_nginx,
        )

        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

        if args.scenario == "plan":
            from services.bench.plan import run_plan_scenario

            report = run_plan_scenario(
                options.work_dir, options.scripts_dir, options.devices, args.repeats, log
            )
        else:
            report = run_scenario(args.scenario, options, log)
        print(f"\npbxfront bench {args.scenario} on {report['machine']}\n")
        print(report["table"])
        results = options.work_dir / "results"
        results.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        paths = [results / f"{args.scenario}-{stamp}.json"]
        if args.json:
            paths.append(Path(args.json))
        for path in paths:
            path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nresults: {', '.join(str(p) for p in paths)}")
        unmet = [row["name"] for row in report["rows"] if row["met"] is False]
        return 1 if unmet else 0

    bench.set_defaults(handler=handler)
