"""``pbxfront bench <scenario>``: the registry of scenarios and the report of one run.

Each scenario is a module of its own (polls, storm, backups, redirect, archive, contacts,
directory, events, console; plan has its own entry point); they share the Frontend they run
against (``environment``) and how rows are measured and shown (``measure``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.bench import (
    archive,
    backups,
    console,
    contacts,
    directory,
    events,
    polls,
    redirect,
    storm,
)
from services.bench.environment import BenchOptions
from services.bench.measure import Row, machine_description, render_table

Scenario = Callable[[BenchOptions, Any], list[Row]]

SCENARIOS: dict[str, Scenario] = {
    "polls": polls.scenario_polls,
    "storm": storm.scenario_storm,
    "backups": backups.scenario_backups,
    "redirect": redirect.scenario_redirect,
    "archive": archive.scenario_archive,
    "contacts": contacts.scenario_contacts,
    "directory": directory.scenario_directory,
    "events": events.scenario_events,
    "console": console.scenario_console,
}


def run_scenario(name: str, options: BenchOptions, log: Any) -> dict[str, Any]:
    rows = SCENARIOS[name](options, log)
    return {
        "scenario": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()
        },
        "rows": [row.as_json() for row in rows],
        "table": render_table(rows),
    }
