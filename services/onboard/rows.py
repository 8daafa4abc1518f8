"""The onboarding rows: a CSV file or the API's JSON objects checked and normalised into
:class:`Row`, every problem named ``where: field: why`` (no database)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
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
    if len(raws) > MAX_ROWS:
        raise OnboardError([f"rows: at most {MAX_ROWS} per call, not {len(raws)}"])
    problems: list[str] = []
    rows: list[Row] = []
    seen_mac: dict[str, str] = {}
    seen_cpe: dict[str, str] = {}
    for where, raw in raws:
        row, row_problems = _check_row(where, raw, seen_mac, seen_cpe)
        problems.extend(row_problems)
        if not row_problems:
            rows.append(row)
    if problems:
        raise OnboardError(problems)
    return rows


def _check_row(
    where: str, raw: Mapping[str, Any], seen_mac: dict[str, str], seen_cpe: dict[str, str]
) -> tuple[Row, list[str]]:
    """One row normalised and its problems (the row is only usable without any). Records its
    MAC and CPE id in ``seen_mac``/``seen_cpe`` (where each first appeared), problems or not."""
    values, problems = _row_values(where, raw)
    mac = _normalized(where, "mac", values.get("mac"), normalize_mac, problems)
    device_type = _normalized(where, "type", values.get("type"), normalize_device_type, problems)
    device_class = values.get("class") or "phone"
    if device_class not in DEVICE_CLASSES:
        problems.append(
            f"{where}: class: must be one of {', '.join(DEVICE_CLASSES)}, "
            f"not {printable(repr(device_class))}"
        )
    if mac:
        _note_first_use(where, "mac", mac, mac, seen_mac, problems)
    cpe_id = values.get("cpe_id")
    if cpe_id:
        _note_first_use(where, "cpe_id", cpe_id, printable(cpe_id), seen_cpe, problems)
    row = Row(
        where,
        mac,
        device_type,
        values.get("customer") or "",
        cpe_id,
        device_class,
        values.get("name"),
        values.get("frontend"),
        values.get("url"),
    )
    return row, problems


def _row_values(where: str, raw: Mapping[str, Any]) -> tuple[dict[str, str | None], list[str]]:
    """The known fields as stripped text (None when empty or absent) and the problems: values
    that are not text, unknown fields, required fields missing. A field whose value is not text
    is left out of the values, so it is not also reported as missing."""
    values: dict[str, str | None] = {}
    problems: list[str] = []
    for key in (*REQUIRED, *OPTIONAL):
        try:
            values[key] = _text(raw, key)
        except ValueError as error:
            problems.append(f"{where}: {key}: {error}")
    problems.extend(
        f"{where}: {printable(str(key))}: unknown field"
        for key in raw
        if key not in REQUIRED and key not in OPTIONAL
    )
    problems.extend(
        f"{where}: {key}: required"
        for key in ("mac", "type", "customer")
        if key in values and values[key] is None
    )
    return values, problems


def _normalized(
    where: str,
    key: str,
    value: str | None,
    normalize: Callable[[str], str],
    problems: list[str],
) -> str:
    """``normalize(value)``; "" when the value is empty or not valid (a problem then)."""
    if not value:
        return ""
    try:
        return normalize(value)
    except IdentityError as error:
        problems.append(f"{where}: {key}: {error}")
        return ""


def _note_first_use(
    where: str, key: str, value: str, shown: str, seen: dict[str, str], problems: list[str]
) -> None:
    """Remember where ``value`` first appeared; a problem when an earlier row has it."""
    if value in seen:
        problems.append(f"{where}: {key}: {shown} is already in {seen[value]}")
    seen.setdefault(value, where)


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
