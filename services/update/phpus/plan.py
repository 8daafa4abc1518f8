"""The whole import: planned in memory, checked for conflicts, then written (nothing on error)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.update.phpus.base import (
    IMPORT_FOLDER,
    USER_CONFIG_FILE,
    Findings,
)
from services.update.phpus.config import (
    PhpusConfig,
    read_config,
    staging_phases,
    update_phases,
)
from services.update.phpus.fragments import (
    inventory_fragment,
    settings_fragment,
)
from services.update.phpus.sources import (
    read_scripts,
)
from services.update.phpus.templates import (
    selection_template,
)


@dataclass(frozen=True)
class Output:
    relative: str
    text: str
    source: Path | None = None  # the PHPUS file it comes from


@dataclass
class Plan:
    outputs: list[Output]
    findings: Findings
    config: PhpusConfig | None

    @property
    def ok(self) -> bool:
        return not self.findings.errors


def plan_import(root: Path, *, encoding: str = "iso-8859-1") -> Plan:
    """Read and check a PHPUS tree; what the import would write (blocking: run in a thread)."""
    findings = Findings()
    if not root.is_dir():
        findings.error(root, "not a folder")
        return Plan([], findings, None)
    config = read_config(root, findings)
    if config is None:
        return Plan([], findings, None)
    scripts = read_scripts(root, config, findings, encoding)
    if len(config.staging_phases) > 1 + (config.forcestaging_phase is not None):
        findings.warning(
            root / USER_CONFIG_FILE,
            "PHPUS phases " + ", ".join(config.staging_phases) + " become one staging.txt "
            "(pbxfront stages in one phase): PHPUS ran them on successive polls",
        )
    outputs = [
        Output(f"{IMPORT_FOLDER}/{script.name}", script.text, script.source) for script in scripts
    ]
    names = [o.relative for o in outputs]
    for name in {n for n in names if names.count(n) > 1}:
        sources = ", ".join(str(o.source) for o in outputs if o.relative == name)
        findings.error(root, f"{sources}: all become {name} (the same device script)")
    outputs += [
        Output(
            "staging.txt",
            selection_template(
                config, staging_phases(config), scripts, what="staging.txt", source=root
            ),
        ),
        Output(
            "update.txt",
            selection_template(
                config, update_phases(config), scripts, what="update.txt", source=root
            ),
        ),
        Output(
            f"{IMPORT_FOLDER}/inventory-fragment.toml", inventory_fragment(config, root, findings)
        ),
        Output(
            f"{IMPORT_FOLDER}/settings-fragment.toml", settings_fragment(config, root, findings)
        ),
    ]
    return Plan(outputs, findings, config)


@dataclass(frozen=True)
class Written:
    written: list[str]
    unchanged: list[str]


def conflicts(plan: Plan, into: Path) -> list[str]:
    """Files in ``into`` that the import would change (refused without --force)."""
    found: list[str] = []
    for output in plan.outputs:
        path = into / output.relative
        if path.exists():
            try:
                same = path.read_bytes() == output.text.encode("utf-8")
            except OSError:
                same = False
            if not same:
                found.append(str(path))
    return found


def write_plan(plan: Plan, into: Path) -> Written:
    """Write every output (each through a temporary file and a rename, so no file is ever half
    written). Blocking: run in a thread."""
    written: list[str] = []
    unchanged: list[str] = []
    for output in plan.outputs:
        path = into / output.relative
        data = output.text.encode("utf-8")
        if path.is_file() and path.read_bytes() == data:
            unchanged.append(output.relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".import-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        written.append(output.relative)
    return Written(written, unchanged)


def describe(plan: Plan) -> list[str]:
    """One line per output: what it is and where it comes from."""
    lines: list[str] = []
    for output in plan.outputs:
        if output.source is not None:
            lines.append(f"{output.relative}  <- {output.source} (raw)")
        else:
            lines.append(f"{output.relative}  (generated)")
    return lines
