"""The PHPUS scripts: read (bytes kept, decoded as UTF-8 or the given encoding), checked, and
marked raw so Jinja2 and ``#(name)`` leave them as they are."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.update.phpus.base import (
    Findings,
)
from services.update.phpus.config import (
    PhpusConfig,
)
from services.update.scripts import MAX_SCRIPT_BYTES, RAW_MARKER

_SCRIPT_NAME = re.compile(r"([^-]+)-(.+)-([^-]+)\.txt")


_DEVICE_SCRIPT = re.compile(r"[0-9a-f]{12}|[0-9a-f]{2}(?:_[0-9a-f]{2}){5}")


# What the script store refuses (scripts.ScriptStore: control characters other than TAB/CR/LF).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


_POLL_LINE = re.compile(r"^\s*config\s+(add|change)\s+UP1\b.*\s/poll\b", re.IGNORECASE)


_PROVISION_LINE = re.compile(r"^\s*mod\s+cmd\s+UP1\s+provision\b", re.IGNORECASE)


_URL_LINE = re.compile(r"^\s*config\s+(add|change)\s+UP1\b.*\s/url\b", re.IGNORECASE)


@dataclass(frozen=True)
class Script:
    """One PHPUS script to import: its name parts (lower case), source and text as written
    (marked raw)."""

    phase: str
    device_class: str
    environment: str  # an environment id, "all", or a MAC (12 hex digits) for a device script
    source: Path
    text: str

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.device_class}-{self.environment}.txt"


def mark_raw(text: str) -> str:
    """The script as pbxfront serves it byte for byte: the raw marker line, then the text (the
    store neither sends nor hashes the marker; a BOM after it stays, as PHPUS sent and hashed
    it)."""
    return RAW_MARKER + "\n" + text


def decode(data: bytes, path: Path, encoding: str, findings: Findings) -> str:
    """UTF-8, else ``encoding`` with a warning naming the first line that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        findings.warning(
            path,
            f"not UTF-8 (first at byte {error.start}): read as {encoding} and written as UTF-8; "
            "PHPUS hashed the original bytes, so devices that get this file run their script "
            "once more after the move",
            line,
        )
        return data.decode(encoding, errors="replace")


def _lint(path: Path, text: str, findings: Findings) -> None:
    """Lines PHPUS scripts carry that pbxfront now owns; reported, never changed (the hash)."""
    if text.startswith("\ufeff"):
        findings.warning(path, "starts with a UTF-8 byte order mark (kept: PHPUS sent it too)", 1)
    for number, line in enumerate(text.split("\n"), start=1):
        if _POLL_LINE.search(line) or _PROVISION_LINE.search(line):
            findings.warning(
                path,
                "sets the poll interval or provision mode: pbxfront's server owns fast polling "
                "and the interval (h-poll, update.poll_interval) now; remove the line "
                "(the script then runs once more)",
                number,
            )
        elif _URL_LINE.search(line):
            findings.warning(
                path,
                "sets the update URL: pbxfront's server writes it; a URL back to update.php "
                "makes the device bounce once per change",
                number,
            )
        if "\r" in line.rstrip("\r"):
            findings.warning(
                path,
                "a lone CR inside the line: kept (PHPUS sent it and did not split there)",
                number,
            )


def read_scripts(
    root: Path, config: PhpusConfig, findings: Findings, encoding: str
) -> list[Script]:
    """Every script PHPUS can deliver under this config, checked; the rest is reported."""
    folder = Path(config.scripts_dir)
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        findings.error(folder, "missing: the scripts folder (times/@dir) does not exist")
        return []
    phase_names = {p.lower() for p in config.phases if p != config.forcestaging_phase}
    environment_names = {e.lower() for e in config.environments}
    all_phase = len(config.phases) > 1
    all_class = len(config.classes) > 1
    all_environment = len(config.environments) > 1
    scripts: list[Script] = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(".txt"):
            continue
        if not path.is_file() or path.is_symlink():
            findings.warning(path, "not a regular file: not imported")
            continue
        match = _SCRIPT_NAME.fullmatch(path.name)
        if match is None or path.name != path.name.lower():
            findings.warning(
                path,
                "not a PHPUS script name (lower-case <phase>-<class>-<env>.txt): PHPUS never "
                "delivers it; not imported",
            )
            continue
        phase, device_class, environment = match.groups()
        never = None
        if phase == "all":
            if not all_phase:
                never = "only one phase is defined, so PHPUS reads no all-… files"
        elif phase not in phase_names:
            never = f"phase {phase!r} is not in the config (phases: {', '.join(config.phases)})"
        if never is None and device_class == "all" and not all_class:
            never = "only one class is defined, so PHPUS reads no …-all-… files"
        if never is None:
            if environment == "all":
                if not all_environment:
                    never = "only one environment is defined, so PHPUS reads no …-all.txt files"
            elif _DEVICE_SCRIPT.fullmatch(environment):
                environment = environment.replace("_", "")
            elif environment not in environment_names:
                never = (
                    f"environment {environment!r} is not in the config and is not a device's "
                    "MAC (environments: " + ", ".join(config.environments) + ")"
                )
        if never is not None:
            findings.warning(path, f"never delivered by PHPUS: {never}; not imported")
            continue
        try:
            data = path.read_bytes()
        except OSError as error:
            findings.error(path, f"cannot read: {error.strerror}")
            continue
        if len(data) > MAX_SCRIPT_BYTES:
            findings.error(path, f"larger than {MAX_SCRIPT_BYTES} bytes (pbxfront's script limit)")
            continue
        text = decode(data, path, encoding, findings)
        _lint(path, text, findings)
        control = _CONTROL.search(text)
        if control is not None:
            findings.error(
                path,
                f"control character {control.group()!r}: pbxfront refuses it in a script "
                "(PHPUS would have sent it to the device); remove it",
                text.count("\n", 0, control.start()) + 1,
            )
            continue
        scripts.append(Script(phase, device_class, environment, path, mark_raw(text)))
    if not scripts:
        findings.warning(folder, "no PHPUS scripts to import")
    return scripts
