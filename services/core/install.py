"""``pbxfront init``: a starter configuration and state directory from the files the package
ships (the wheel installs them under ``<prefix>/share/pbxfront/``; a source checkout has them at
its top level), for ``/etc/pbxfront`` and ``/var/lib/pbxfront`` or any other pair.

Existing files are never overwritten (each is reported as kept), so running it again is safe.
Blocking file I/O: a CLI command, not called from the event loop.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.core.errors import UsageError

SHARE = Path("share") / "pbxfront"
EXAMPLE = Path("config") / "pbxfront.example.toml"

STARTER = """\
# pbxfront settings written by `pbxfront init`. Every key, with its default and meaning, is in
# pbxfront.example.toml next to this file; copy what you need from there.

# Relative paths below resolve here (the systemd unit sets the same).
base_dir = "{data_dir}"
data_dir = "{data_dir}"
# This node's Frontend id in the inventory.
frontend = "sb1"

[database]
# Empty: the embedded PostgreSQL in <data_dir>/postgres. Production: a DSN in a file, e.g.
# url_file = "/etc/pbxfront/database-url"
url = ""

[update]
scripts_dir = "staging_scripts"
firmware_dir = "firmware"

# Listeners: see [listeners.*] in pbxfront.example.toml (device, admin, redirect, directory),
# each with its certificate and key.
"""


@dataclass
class InitReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def shipped_files() -> Path:
    """The directory holding config/, staging_scripts/ and systemd/ as the package ships them."""
    candidates = [Path(sys.prefix) / SHARE, Path(__file__).resolve().parents[2]]
    for candidate in candidates:
        if (candidate / EXAMPLE).is_file():
            return candidate
    raise UsageError(
        "init: the shipped example files are missing (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall the pbxfront wheel"
    )


def _copy(source: Path, target: Path, report: InitReport) -> None:
    if target.exists():
        report.kept.append(target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    report.written.append(target)


def _write(text: str, target: Path, report: InitReport) -> None:
    if target.exists():
        report.kept.append(target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, "utf-8")
    report.written.append(target)


def init(config_dir: Path, data_dir: Path) -> InitReport:
    """Write the starter set; UsageError naming the directory when it cannot be written."""
    shipped = shipped_files()
    config_dir, data_dir = config_dir.absolute(), data_dir.absolute()
    report = InitReport()
    try:
        _write(STARTER.format(data_dir=data_dir), config_dir / "pbxfront.toml", report)
        for name in ("pbxfront.example.toml", "inventory.example.toml"):
            _copy(shipped / "config" / name, config_dir / name, report)
        for source in sorted((shipped / "config" / "monitoring").iterdir()):
            _copy(source, config_dir / "monitoring" / source.name, report)
        _copy(shipped / "systemd" / "pbxfront.service", config_dir / "pbxfront.service", report)
        scripts = shipped / "staging_scripts"
        for source in sorted(path for path in scripts.rglob("*") if path.is_file()):
            _copy(source, data_dir / "staging_scripts" / source.relative_to(scripts), report)
        (data_dir / "firmware" / "firm").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        where = error.filename or config_dir
        raise UsageError(
            f"init: cannot write {where}: {error.strerror or error} (run it as root, or choose "
            "other directories with --config-dir and --data-dir); nothing was overwritten"
        ) from None
    return report
