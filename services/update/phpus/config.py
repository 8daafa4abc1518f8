"""``config.xml`` merged with ``config/user-config.xml`` as PHPUS merges them: classes, phases,
environments, times, firmware."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from services.update.phpus.base import (
    CONFIG_FILE,
    DEVELOPER_CONFIG_FILE,
    USER_CONFIG_FILE,
    Findings,
)

_TRIM = " \t\n\r\0\x0b"


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
