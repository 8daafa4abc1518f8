"""The onboarding rows: a CSV file or the API's JSON objects checked and normalised into
:class:`Row`, every problem named ``where: field: why`` (no database)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.core.identity import IdentityError, normalize_device_type, normalize_mac, printable
from services.core.inventory import DEVICE_CLASSES

REQUIRED = ("mac", "type", "customer", "cpe_id")
OPTIONAL = ("class", "name", "frontend", "url")
MAX_ROWS = 10000


class OnboardError(Exception):
    """Every problem found; nothing was changed."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Row:
    where: str  # "file:line"
    mac: str
    device_type: str
    customer: str
    cpe_id: str | None
    device_class: str
    name: str | None
    frontend: str | None
    url: str | None


def _text(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {type(value).__name__}")
    value = value.strip()
    return value or None


def check_rows(raws: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Row]:
    """Rows normalised; OnboardError with every ``where: field: why`` otherwise (no database)."""
    problems: list[str] = []
    rows: list[Row] = []
    seen_mac: dict[str, str] = {}
    seen_cpe: dict[str, str] = {}
    if len(raws) > MAX_ROWS:
        raise OnboardError([f"rows: at most {MAX_ROWS} per call, not {len(raws)}"])
    for where, raw in raws:
        values: dict[str, str | None] = {}
        bad = False
        for key in (*REQUIRED, *OPTIONAL):
            try:
                values[key] = _text(raw, key)
            except ValueError as error:
                problems.append(f"{where}: {key}: {error}")
                bad = True
        for key in raw:
            if key not in REQUIRED and key not in OPTIONAL:
                problems.append(f"{where}: {printable(str(key))}: unknown field")
                bad = True
        for key in ("mac", "type", "customer"):
            if key in values and values[key] is None:
                problems.append(f"{where}: {key}: required")
                bad = True
        mac = device_type = ""
        if values.get("mac"):
            try:
                mac = normalize_mac(values["mac"] or "")
            except IdentityError as error:
                problems.append(f"{where}: mac: {error}")
                bad = True
        if values.get("type"):
            try:
                device_type = normalize_device_type(values["type"] or "")
            except IdentityError as error:
                problems.append(f"{where}: type: {error}")
                bad = True
        device_class = values.get("class") or "phone"
        if device_class not in DEVICE_CLASSES:
            problems.append(
                f"{where}: class: must be one of {', '.join(DEVICE_CLASSES)}, "
                f"not {printable(repr(device_class))}"
            )
            bad = True
        if mac:
            if mac in seen_mac:
                problems.append(f"{where}: mac: {mac} is already in {seen_mac[mac]}")
                bad = True
            seen_mac.setdefault(mac, where)
        cpe_id = values.get("cpe_id")
        if cpe_id:
            if cpe_id in seen_cpe:
                problems.append(
                    f"{where}: cpe_id: {printable(cpe_id)} is already in {seen_cpe[cpe_id]}"
                )
                bad = True
            seen_cpe.setdefault(cpe_id, where)
        if not bad:
            rows.append(
                Row(
                    where,
                    mac,
                    device_type,
                    values["customer"] or "",
                    cpe_id,
                    device_class,
                    values.get("name"),
                    values.get("frontend"),
                    values.get("url"),
                )
            )
    if problems:
        raise OnboardError(problems)
    return rows


def parse_csv(text: str, source: str) -> list[Row]:
    """CSV with a header line naming at least ``mac,type,customer,cpe_id``."""
    reader = csv.reader(io.StringIO(text))
    lines = list(reader)
    if not lines:
        raise OnboardError([f"{source}:1: header: the file is empty"])
    header = [name.strip().lower() for name in lines[0]]
    known = (*REQUIRED, *OPTIONAL)
    problems = [f"{source}:1: {name}: missing column" for name in REQUIRED if name not in header]
    problems += [
        f"{source}:1: {printable(name)}: unknown column (known: {', '.join(known)})"
        for name in header
        if name not in REQUIRED and name not in OPTIONAL
    ]
    if problems:
        raise OnboardError(problems)
    raws: list[tuple[str, Mapping[str, Any]]] = []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        where = f"{source}:{number}"
        if len(cells) != len(header):
            problems.append(f"{where}: row: {len(cells)} cells, the header has {len(header)}")
            continue
        raws.append((where, dict(zip(header, cells, strict=True))))
    try:
        rows = check_rows(raws)
    except OnboardError as error:
        raise OnboardError([*problems, *error.problems]) from None
    if problems:
        raise OnboardError(problems)
    return rows
