"""``pbxfront scripts import-phpus DIR``: a PHPUS tree as pbxfront scripts, hashes kept.

innovaphone's PHP update server (PHPUS, protocol.md §2, §10) reads ``config.xml`` merged with
``config/user-config.xml`` and, for each poll, delivers the files ``scripts/<phase>-<class>-
<env>.txt`` that exist, in this order (its ``getPossibleScripts``):

    for phase in ["all" if more than one phase] + [the device's phase]
      for class in ["all" if more than one class] + [classes whose <model> names the type]
                   + [the type itself, lower case]
        for env in ["all" if more than one environment] + [the device's sn, "-" -> "_"]
                   + [env= of the URL (default: the first environment) and what it implies]

and guards the final phase with the MD5 of the files' trimmed non-empty lines (``script_hash``).
The import writes

    staging.txt, update.txt         the same selection as Jinja2 (staging: the non-final phases,
                                    update: the final one), reading ``vars["phpus-env"]``
    phpus/<phase>-<class>-<env>.txt the scripts, bytes kept, each marked raw (first line
                                    ``{#- pbxfront: raw -#}``, scripts.RAW_MARKER): sent as they
                                    are, no Jinja2, no #(name), so a literal ``{{``, ``{%`` or
                                    ``#(x)`` stays what it was and never breaks a poll
    phpus/inventory-fragment.toml   update variables for what config.xml said (h-poll,
                                    update-allow, update-initial, fw-prot, fw-boot, phpus-env)
    phpus/settings-fragment.toml    pbxfront.toml [update] keys for the rest (grace, fast
                                    polling, firmware-less models, per-model file names)

so a device moved from PHPUS with the same scripts is in sync at its first ``update.txt`` poll.
Everything is read and checked first; with an error nothing is written. Files that are not UTF-8
are read as ``encoding`` (PHPUS trees are often ISO-8859-1) and written as UTF-8, with a warning:
PHPUS hashed the original bytes, so devices that get such a file run their script once more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.config import Settings, cli_overrides, config_files_from_env, load_settings
from services.update.provisioning.context import BUILD_PATTERN, HOURS_PATTERN
from services.update.scripts import MAX_SCRIPT_BYTES, RAW_MARKER

CONFIG_FILE = "config.xml"
USER_CONFIG_FILE = "config/user-config.xml"
# PHPUS prefers this one to user-config.xml when it exists (readConfig).
DEVELOPER_CONFIG_FILE = "config/user-config-dvl.xml"
IMPORT_FOLDER = "phpus"
ENVIRONMENT_VARIABLE = "phpus-env"
_SCRIPT_NAME = re.compile(r"([^-]+)-(.+)-([^-]+)\.txt")
_DEVICE_SCRIPT = re.compile(r"[0-9a-f]{12}|[0-9a-f]{2}(?:_[0-9a-f]{2}){5}")
_MODEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# What the script store refuses (scripts.ScriptStore: control characters other than TAB/CR/LF).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_POLL_LINE = re.compile(r"^\s*config\s+(add|change)\s+UP1\b.*\s/poll\b", re.IGNORECASE)
_PROVISION_LINE = re.compile(r"^\s*mod\s+cmd\s+UP1\s+provision\b", re.IGNORECASE)
_URL_LINE = re.compile(r"^\s*config\s+(add|change)\s+UP1\b.*\s/url\b", re.IGNORECASE)
_TRIM = " \t\n\r\0\x0b"


@dataclass(frozen=True)
class Problem:
    """One finding, ``path:line: severity: message`` (line 0: the whole file)."""

    severity: str  # error | warning
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)

    def error(self, path: Path | str, message: str, line: int = 0) -> None:
        self.problems.append(Problem("error", str(path), line, message))

    def warning(self, path: Path | str, message: str, line: int = 0) -> None:
        self.problems.append(Problem("warning", str(path), line, message))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


# --- config.xml as PHPUS merges it ---------------------------------------------------------------


def _php_int(text: str | None) -> int:
    """PHP's ``(int)`` of a string: its leading integer, else 0."""
    match = re.match(r"\s*([+-]?\d+)", text or "")
    return int(match.group(1)) if match else 0


def merge_config(left: ElementTree.Element, right: ElementTree.Element, level: int = 0) -> None:
    """PHPUS's mergeConfigs: ``right`` (user-config.xml) into ``left`` (config.xml).

    Attributes overwrite; a tag ``left`` lacks is added; a tag with an ``id`` merges into the one
    with the same id (else is added); a single tag on both sides merges, several are added. At
    the top level, tags carrying ``seq`` are sorted by it (a repeated seq keeps only the last,
    as PHPUS's array does). Raises ValueError for an id-keyed tag without id.
    """
    if len(right) == 0 and len(left) == 0:
        left.text = right.text
    for name, value in right.attrib.items():
        left.set(name, value)
    for child in right:
        existing = left.findall(child.tag)
        target: ElementTree.Element | None = None
        if not existing:
            target = ElementTree.SubElement(left, child.tag)
        elif "id" in existing[0].attrib:
            if "id" not in child.attrib:
                raise ValueError(f"must have 'id' attribute in '{child.tag}' tag")
            target = next((e for e in existing if e.get("id") == child.get("id")), None)
            if target is None:
                target = ElementTree.SubElement(left, child.tag)
        elif len(existing) > 1 or len(right.findall(child.tag)) > 1:
            target = ElementTree.SubElement(left, child.tag)
        else:
            target = existing[0]
        merge_config(target, child, level + 1)
    if level == 0:
        for section in left:
            sorted_tags = {child.tag for child in section if "seq" in child.attrib}
            for tag in sorted_tags:
                by_seq: dict[int, ElementTree.Element] = {}
                for child in section.findall(tag):
                    by_seq[_php_int(child.get("seq"))] = child
                    section.remove(child)
                for seq in sorted(by_seq):
                    section.append(by_seq[seq])


@dataclass(frozen=True)
class PhpusConfig:
    """What the import needs of the merged configuration."""

    phases: tuple[str, ...]  # in order; the forcestaging phase included
    final_phase: str
    forcestaging_phase: str | None  # "_first_<final>": the final phase's scripts, no guard
    environments: dict[str, tuple[str, ...]]  # id -> itself + implies, in PHPUS's order
    classes: dict[str, tuple[str, ...]]  # id -> models (lower case), in config order
    times: dict[str, str]
    nofirm: tuple[str, ...]
    noboot: tuple[str, ...]
    filenames: dict[str, dict[str, str]]  # model -> {"prot": file, "boot": file}
    firmware: str
    bootcode: str
    applies: tuple[str, ...]
    scripts_dir: str

    @property
    def first_environment(self) -> str:
        return next(iter(self.environments))

    @property
    def staging_phases(self) -> tuple[str, ...]:
        return tuple(p for p in self.phases if p != self.final_phase)

    def script_phase(self, phase: str) -> str:
        """The phase whose files a phase delivers (the forcestaging phase: the final one's)."""
        return self.final_phase if phase == self.forcestaging_phase else phase


def _parse_xml(path: Path, findings: Findings) -> ElementTree.Element | None:
    try:
        data = path.read_bytes()
    except OSError as error:
        findings.error(path, f"cannot read: {error.strerror}")
        return None
    try:
        # The operator's own PHPUS files; expat fetches no external DTD or entity and limits
        # entity expansion (billion laughs) itself since 2.4.1.
        return ElementTree.fromstring(data)  # noqa: S314
    except ElementTree.ParseError as error:
        line = error.position[0] if error.position else 0
        findings.error(path, f"not well-formed XML: {error}", line)
        return None


def _ids(
    section: ElementTree.Element | None, tag: str, source: Path, findings: Findings, *, what: str
) -> list[ElementTree.Element]:
    """The tags of a section, checked as PHPUS checks them (no "all", no dash, no duplicate)."""
    if section is None:
        return []
    seen: set[str] = set()
    found: list[ElementTree.Element] = []
    for element in section.findall(tag):
        identifier = element.get("id", "")
        if identifier in ("all", "_") or identifier == "":
            findings.error(source, f"{what} name {identifier!r} not allowed (PHPUS refuses it)")
        elif "-" in identifier:
            findings.error(source, f"{what} {identifier!r}: no dash allowed in name (PHPUS)")
        elif identifier in seen:
            findings.error(source, f"{what} {identifier!r}: duplicate definition")
        seen.add(identifier)
        found.append(element)
    return found


def read_config(root: Path, findings: Findings) -> PhpusConfig | None:
    """config.xml merged with the user config, as PHPUS's readConfig does; None on error."""
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        findings.error(config_path, "missing: not a PHPUS folder (config.xml is its defaults)")
        return None
    config = _parse_xml(config_path, findings)
    if config is None:
        return None
    user_path = root / DEVELOPER_CONFIG_FILE
    if not user_path.is_file():
        user_path = root / USER_CONFIG_FILE
    user: ElementTree.Element | None = None
    if user_path.is_file():
        user = _parse_xml(user_path, findings)
        if user is None:
            return None
        try:
            merge_config(config, user)
        except ValueError as error:
            findings.error(user_path, str(error))
            return None
    else:
        findings.warning(
            root / USER_CONFIG_FILE, "missing (PHPUS refuses to run without it): config.xml alone"
        )
    source = user_path if user is not None else config_path

    phases_section = config.find("phases")
    phase_elements = _ids(phases_section, "phase", source, findings, what="phase")
    if not phase_elements:
        findings.error(source, "config: need at least one phase")
        return None
    final = phase_elements[-1].get("id", "")
    forcestaging: str | None = None
    user_times = user.find("times") if user is not None else None
    # PHPUS reads these two from the user config alone (readConfig's $doFakePhase).
    if (
        user_times is not None
        and user_times.get("allow", "").strip(_TRIM) != ""
        and user_times.get("forcestaging", "false") == "true"
        and phases_section is not None
    ):
        forcestaging = "_first_" + final
        last_seq = _php_int(phase_elements[-1].get("seq"))
        phase_elements[-1].set("seq", str(last_seq + 1))
        extra = ElementTree.Element("config")
        ElementTree.SubElement(ElementTree.SubElement(extra, "phases"), "phase").attrib.update(
            {"id": forcestaging, "seq": str(last_seq)}
        )
        merge_config(config, extra)
        phase_elements = phases_section.findall("phase")
    phases = tuple(e.get("id", "") for e in phase_elements)

    environment_elements = _ids(
        config.find("environments"), "environment", source, findings, what="environment"
    )
    if not environment_elements:
        findings.error(source, "config: need at least one environment")
        return None
    environments: dict[str, tuple[str, ...]] = {}
    for element in environment_elements:
        identifier = element.get("id", "")
        implied = tuple((i.text or "").strip() for i in element.findall("implies"))
        environments[identifier] = (identifier, *implied)
    for identifier, implied in environments.items():
        for name in implied[1:]:
            if name not in environments:
                findings.error(
                    source, f"implication {name!r} in {identifier!r} must be a defined environment"
                )

    classes: dict[str, tuple[str, ...]] = {}
    for element in _ids(config.find("classes"), "class", source, findings, what="class"):
        classes[element.get("id", "")] = tuple(
            (m.text or "").strip().lower() for m in element.findall("model")
        )

    times_element = config.find("times")
    times = dict(times_element.attrib) if times_element is not None else {}
    for key in ("allow", "initial", "polling", "interval", "httpsport"):
        if times.get(key) == "":
            del times[key]

    def models(tag: str) -> tuple[str, ...]:
        section = config.find(tag)
        if section is None:
            return ()
        return tuple((m.text or "").strip().lower() for m in section.findall("model"))

    filenames: dict[str, dict[str, str]] = {}
    section = config.find("filenames")
    if section is not None:
        for element in section.findall("model"):
            model = element.get("id")
            if model is None:
                continue
            names = {k: v for k, v in element.attrib.items() if k in ("prot", "boot")}
            # PHPUS takes the first <model> naming the model (getFWStorage's break).
            filenames.setdefault(model.lower(), names)
    master = config.find("master")
    master_attributes = dict(master.attrib) if master is not None else {}
    applies = (
        tuple((a.text or "").strip() for a in master.findall("applies"))
        if master is not None
        else ()
    )
    return PhpusConfig(
        phases=phases,
        final_phase=phases[-1],
        forcestaging_phase=forcestaging,
        environments=environments,
        classes=classes,
        times=times,
        nofirm=models("nofirmdev"),
        noboot=models("nobootdev"),
        filenames=filenames,
        firmware=master_attributes.get("firmware") or "master",
        bootcode=master_attributes.get("bootcode") or "master",
        applies=applies,
        scripts_dir=times.get("dir") or "scripts",
    )


# --- the scripts -------------------------------------------------------------------------------


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


# --- the generated templates -------------------------------------------------------------------


def _jinja_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def selection_template(
    config: PhpusConfig,
    phases: Sequence[str],
    scripts: Sequence[Script],
    *,
    what: str,
    source: Path,
) -> str:
    """A staging.txt / update.txt that includes ``phpus/`` files in PHPUS's order for
    ``phases`` (already with "all" first where PHPUS has it)."""
    used_classes = {s.device_class for s in scripts}
    class_lines: list[str] = []
    for identifier, models in config.classes.items():
        name = identifier.lower()
        if name in used_classes and models:
            class_lines.append(
                f"    + ({_jinja_list([name])} if type in {_jinja_list(models)} else [])"
            )
    classes_expression = _jinja_list(["all"] if len(config.classes) > 1 else [])
    if class_lines:
        classes_expression += "\n" + "\n".join(class_lines)
    implied = (
        "{"
        + ", ".join(
            f"{json.dumps(e)}: {_jinja_list(i.lower() for i in implies)}"
            for e, implies in config.environments.items()
        )
        + "}"
    )
    all_environment = _jinja_list(["all"] if len(config.environments) > 1 else [])
    shown = str(source).replace("#}", "# }").replace("\n", " ")
    header = (
        f"{{#- {what}: generated by `pbxfront scripts import-phpus` from {shown}.\n"
        "    PHPUS's selection (getPossibleScripts), in its order: for each phase, class and\n"
        "    environment below, the file phpus/<phase>-<class>-<env>.txt if it exists.\n"
        '    Classes: "all" (when PHPUS has more than one class), the classes whose <model>\n'
        '    list names the device type, then the type itself. Environments: "all" (when more\n'
        "    than one), the device's own (its MAC), then the update variable phpus-env\n"
        f"    (comma-separated, default {config.first_environment!r}) with what it implies.\n"
        "    The files under phpus/ are PHPUS's, byte for byte, marked raw (sent as they are:\n"
        "    no Jinja2, no #(name)). -#}\n"
    )
    if not phases:
        return header + "{#- PHPUS has no phase before the final one: nothing to stage. -#}\n"
    return (
        header
        + "{%- set type = device.type | lower -%}\n"
        + "{%- set classes = "
        + classes_expression
        + " -%}\n"
        + "{%- set classes = classes + ([type] if type not in classes else []) -%}\n"
        + "{%- set implied = "
        + implied
        + " -%}\n"
        + "{%- set found = namespace(environments=[]) -%}\n"
        + f'{{%- for name in (vars.get("{ENVIRONMENT_VARIABLE}", '
        + json.dumps(config.first_environment)
        + ') | string).split(",") -%}\n'
        + "{#- PHPUS adds an environment's implications with PHP's array union: only past the\n"
        + "    ones it already has. An unknown name is an error, as in PHPUS. -#}\n"
        + "{%- if name not in implied %}{{ phpus_env_names_no_phpus_environment }}{% endif -%}\n"
        + "{%- set found.environments = found.environments"
        + " + implied[name][found.environments | length:] -%}\n"
        + "{%- endfor -%}\n"
        + "{%- set environments = "
        + all_environment
        + " + [device.mac] + found.environments -%}\n"
        + "{%- for phase in "
        + _jinja_list(phases)
        + " %}"
        + "{% for class in classes %}{% for environment in environments %}\n"
        + f'{{% include "{IMPORT_FOLDER}/" ~ phase ~ "-" ~ class ~ "-" ~ environment ~ ".txt" '
        + "ignore missing %}\n"
        + "{%- endfor %}{% endfor %}{% endfor %}\n"
    )


def update_phases(config: PhpusConfig) -> list[str]:
    phases = ["all"] if len(config.phases) > 1 else []
    return [*phases, config.final_phase.lower()]


def staging_phases(config: PhpusConfig) -> list[str]:
    if not config.staging_phases:
        return []
    phases = ["all"] if len(config.phases) > 1 else []
    for phase in config.staging_phases:
        name = config.script_phase(phase).lower()
        if name not in phases:
            phases.append(name)
    return phases


# --- the fragments -------------------------------------------------------------------------------


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def inventory_fragment(config: PhpusConfig, source: Path, findings: Findings) -> str:
    """Update variables (inventory format) for what the PHPUS config expressed."""
    times_source = source / USER_CONFIG_FILE
    lines = [
        f"# Generated by `pbxfront scripts import-phpus` from {source}: what its config said, as",
        "# update variables. `pbxfront inventory apply` makes the database match one whole file,",
        "# so merge these into your inventory file (config/inventory.example.toml documents it).",
        "",
        "[variables]",
        "# The PHPUS environment a device's scripts are chosen for (PHPUS: the env= argument of",
        "# its URL, else the first environment); set it per customer or device for others.",
        f"{ENVIRONMENT_VARIABLE} = {_toml(config.first_environment)}",
    ]
    interval = config.times.get("interval", "15")
    if interval.isdigit() and 1 <= int(interval) <= 1440:
        lines += ["# times/@interval: minutes between polls.", f"h-poll = {_toml(interval)}"]
    else:
        findings.warning(times_source, f"times/@interval {interval!r} is not minutes; not taken")
    allow = config.times.get("allow")
    if allow is not None:
        hours = allow.replace(" ", "")
        if HOURS_PATTERN.fullmatch(hours) and all(int(h) <= 23 for h in hours.split(",")):
            lines += [
                "# times/@allow: the hours devices may run their script (from the final phase on).",
                f"update-allow = {_toml(hours)}",
            ]
        else:
            findings.warning(
                times_source,
                f"times/@allow {allow!r} is not a list of hours 0..23; not taken (pbxfront "
                "checks update-allow)",
            )
    initial = config.times.get("initial")
    if initial is not None:
        if initial.isdigit():
            lines += ["# times/@initial.", f"update-initial = {_toml(initial)}"]
        else:
            findings.warning(times_source, f"times/@initial {initial!r} is not a number; not taken")
    if config.applies:
        findings.warning(
            source / CONFIG_FILE,
            "master/applies limits firmware to some classes or environments: not converted, "
            "narrow fw-prot/fw-boot per device type or customer yourself",
        )
    for kind, build in (("prot", config.firmware), ("boot", config.bootcode)):
        label = "firmware" if kind == "prot" else "bootcode"
        if build == "none":
            continue
        if build == "firmware" and kind == "boot":
            build = config.firmware
        if not build.isdigit() or not BUILD_PATTERN.fullmatch(build):
            findings.warning(
                source / CONFIG_FILE,
                f"master/@{label} is {build!r} (PHPUS asks the master device's box_info): "
                f"not converted, set fw-{kind} to the build yourself",
            )
            continue
        lines += [
            f"# master/@{label}: every device type gets this build (PROT/BOOT as devices",
            "# report them), but the models PHPUS exempts (below).",
            f"fw-{kind} = {_toml(build)}",
        ]
    types: dict[str, list[str]] = {}
    if config.firmware != "none":
        for model in config.nofirm:
            types.setdefault(model, []).append('fw-prot = ""')
    if config.bootcode != "none":
        for model in config.noboot:
            types.setdefault(model, []).append('fw-boot = ""')
    for model, names in config.filenames.items():
        for kind in ("prot", "boot"):
            name = names.get(kind)
            if name is None:
                continue
            if _FILE_NAME.fullmatch(name) and ".." not in name:
                types.setdefault(model, []).append(f"fw-{kind}-file = {_toml(name)}")
            else:
                findings.warning(
                    source / CONFIG_FILE, f"filenames/model {model!r}: {kind}={name!r} not taken"
                )
    for model, assignments in sorted(types.items()):
        if not _MODEL.fullmatch(model):
            findings.warning(source / CONFIG_FILE, f"model {model!r} is not a device type")
            continue
        lines += ["", f"[device_types.{_toml(model.upper())}.variables]", *assignments]
    return "\n".join(lines) + "\n"


def settings_fragment(config: PhpusConfig, source: Path, findings: Findings) -> str:
    """pbxfront.toml [update] keys for the rest of the PHPUS config."""
    lines = [
        f"# Generated by `pbxfront scripts import-phpus` from {source}: pbxfront.toml settings",
        "# for what its config said. Merge into [update] of your pbxfront.toml.",
        "[update]",
    ]
    interval = config.times.get("interval", "15")
    if interval.isdigit() and 1 <= int(interval) <= 1440:
        lines += [
            "# times/@interval (also h-poll in the inventory fragment)",
            f"poll_interval = {interval}",
        ]
    grace = config.times.get("grace")
    if grace is not None and grace.isdigit():
        lines += ["# times/@grace", f"grace_seconds = {int(grace)}.0"]
    polling = config.times.get("polling")
    if polling is not None and polling.isdigit() and 1 <= int(polling) <= 60:
        lines += [
            "# times/@polling: minutes of fast polling while staging",
            f"provision_minutes = {polling}",
        ]
    lines += [
        "# nofirmdev / nobootdev",
        "firmware_none = " + _jinja_list(config.nofirm),
        "boot_none = " + _jinja_list(config.noboot),
    ]
    for kind, key in (("prot", "firmware_names"), ("boot", "boot_names")):
        pairs = [f"{m}={n[kind]}" for m, n in config.filenames.items() if kind in n]
        lines.append(f"{key} = {_jinja_list(pairs)}")
    if config.times.get("check", "") != "true":
        findings.warning(
            source / USER_CONFIG_FILE,
            'times/@check is not "true": PHPUS sent no CHECK and re-ran the scripts on every '
            "poll; pbxfront guards update.txt with the run-once hash, so each device runs its "
            "script once more after the move, then only on changes",
        )
    if config.times.get("forcehttps") == "true" or config.times.get("forcetrust") == "true":
        findings.warning(
            source / USER_CONFIG_FILE,
            "times/@forcehttps/@forcetrust: pbxfront's device listeners are HTTPS and prove "
            "devices by their certificate (listeners.*.request_client_certificate)",
        )
    return "\n".join(lines) + "\n"


# --- the whole import --------------------------------------------------------------------------


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


# --- `pbxfront scripts import-phpus` ---------------------------------------------------------


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
    command = script_actions.add_parser(
        "import-phpus",
        parents=[common],
        help="convert a PHPUS tree (config.xml, scripts/) into pbxfront scripts, hashes kept",
    )
    command.add_argument("phpus_dir", metavar="DIR", help="the PHPUS folder (with config.xml)")
    command.add_argument("--into", metavar="DIR", help="default: update.scripts_dir")
    command.add_argument("--dry-run", action="store_true", help="print what would be written")
    command.add_argument(
        "--force", action="store_true", help="replace files that exist with other content"
    )
    command.add_argument(
        "--encoding",
        default="iso-8859-1",
        help="how to read scripts that are not UTF-8 (default iso-8859-1)",
    )
    command.set_defaults(handler=import_command)
