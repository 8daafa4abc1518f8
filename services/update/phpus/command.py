"""``pbxfront scripts import-phpus DIR``: the command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from services.core.commands import add_command, argument
from services.core.config import Settings, cli_overrides, config_files_from_env, load_settings
from services.update.phpus.base import (
    IMPORT_FOLDER,
)
from services.update.phpus.plan import (
    conflicts,
    describe,
    plan_import,
    write_plan,
)


def _settings_of(args: argparse.Namespace) -> Settings:
    """The settings as every ``pbxfront`` command loads them (``--config``, ``PBXFRONT_CONFIG``,
    ``--set``); the import needs no database, so it is not bound to one."""
    files = (
        [Path(p) for p in args.config]
        if getattr(args, "config", None)
        else config_files_from_env(os.environ)
    )
    return load_settings(files, overrides=cli_overrides(getattr(args, "set", None) or []))


def import_command(args: argparse.Namespace) -> int:
    """``pbxfront scripts import-phpus DIR [--into DIR] [--dry-run] [--force]``."""
    into = Path(args.into) if args.into else _settings_of(args).update.scripts_dir
    plan = plan_import(Path(args.phpus_dir), encoding=args.encoding)
    for problem in plan.findings.problems:
        print(problem, file=sys.stderr)
    if not plan.ok:
        print(f"{len(plan.findings.errors)} error(s): nothing written to {into}", file=sys.stderr)
        return 1
    changed = conflicts(plan, into)
    if args.dry_run:
        print(f"would write to {into}:")
        for line in describe(plan):
            print(f"  {line}")
        for output in plan.outputs:
            if output.source is None:
                print(f"\n--- {into / output.relative}")
                sys.stdout.write(output.text)
        if changed:
            print(f"\nwould replace (needs --force): {', '.join(changed)}")
        return 0
    if changed and not args.force:
        print(
            "these files exist with other content: " + ", ".join(changed) + "; nothing "
            "written (--force replaces them, --into writes elsewhere)",
            file=sys.stderr,
        )
        return 1
    result = write_plan(plan, into)
    for line in describe(plan):
        print(line)
    warnings = len(plan.findings.problems)
    print(
        f"{len(result.written)} file(s) written, {len(result.unchanged)} unchanged in {into}; "
        f"{warnings} warning(s). Next: merge {into / IMPORT_FOLDER}/inventory-fragment.toml into "
        "your inventory, then `pbxfront scripts check`."
    )
    return 0


def register(script_actions: Any, common: argparse.ArgumentParser) -> None:
    """Adds ``import-phpus`` to ``pbxfront scripts``."""
    add_command(
        script_actions,
        common,
        "import-phpus",
        import_command,
        "convert a PHPUS tree (config.xml, scripts/) into pbxfront scripts, hashes kept",
        argument("phpus_dir", metavar="DIR", help="the PHPUS folder (with config.xml)"),
        argument("--into", metavar="DIR", help="default: update.scripts_dir"),
        argument("--dry-run", action="store_true", help="print what would be written"),
        argument(
            "--force", action="store_true", help="replace files that exist with other content"
        ),
        argument(
            "--encoding",
            default="iso-8859-1",
            help="how to read scripts that are not UTF-8 (default iso-8859-1)",
        ),
    )
