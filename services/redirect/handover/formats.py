"""Bulk import bodies (CSV and JSON) as rows, and client text made safe to log."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from typing import Any

from services.core import errors
from services.core.identity import (
    IdentityError,
    normalize_mac,
    printable,
)
from services.core.inputs import loads_json
from services.redirect.handover.inputs import (
    CONTROL_CHARACTERS,
    check_mapping,
)
from services.redirect.handover.writes import (
    ImportRow,
)

_MAC_COLUMNS = ("mac", "sn", "serial")


_KNOWN_COLUMNS = (*_MAC_COLUMNS, "frontend", "url", "facts")


_FACT_SEPARATORS = re.compile(r"[;\s]+")


def _row(number: int, fields: Mapping[str, Any]) -> ImportRow:
    raw_mac = next((fields[c] for c in _MAC_COLUMNS if fields.get(c) not in (None, "")), None)
    shown_mac: str | None = None
    if isinstance(raw_mac, str):
        try:
            shown_mac = normalize_mac(raw_mac)
        except IdentityError:
            shown_mac = printable(raw_mac, 40)
    try:
        mapping = check_mapping(
            raw_mac if raw_mac is not None else "",
            fields.get("frontend"),
            fields.get("url"),
            fields.get("facts"),
        )
    except errors.Invalid as error:
        return ImportRow(number, None, str(error), shown_mac)
    return ImportRow(number, mapping, None, mapping.mac)


def _csv_rows(text: str, max_rows: int) -> list[ImportRow]:
    lines = text.splitlines()
    header_line = next((line for line in lines if line.strip()), "")
    delimiter = max((",", ";", "\t"), key=header_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[ImportRow] = []
    data_rows = 0
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in record]
            unknown = [h for h in header if h not in _KNOWN_COLUMNS and not h.startswith("r-")]
            if unknown:
                raise errors.Invalid(
                    f"CSV column {printable(repr(unknown[0]), 40)} is unknown (known: "
                    f"{', '.join(_KNOWN_COLUMNS)}, and r-<name> fact columns)"
                )
            if not any(h in _MAC_COLUMNS for h in header):
                raise errors.Invalid("CSV needs a header row with a mac (or sn) column")
            continue
        data_rows += 1
        if data_rows > max_rows:
            raise errors.TooLarge(f"the import has more than {max_rows} rows")
        number = data_rows
        if len(record) != len(header):
            rows.append(
                ImportRow(number, None, f"has {len(record)} fields, the header {len(header)}", None)
            )
            continue
        fields: dict[str, Any] = {}
        facts: dict[str, str] = {}
        problem: str | None = None
        for name, cell in zip(header, record, strict=True):
            value = cell.strip()
            if name.startswith("r-"):
                if value:
                    facts[name] = value
            elif name == "facts":
                for assignment in _FACT_SEPARATORS.split(value):
                    if not assignment:
                        continue
                    fact, sep, fact_value = assignment.partition("=")
                    if not sep:
                        problem = f"facts: {printable(repr(assignment), 40)}: expected name=value"
                    facts[fact] = fact_value
            else:
                fields[name] = value
        fields["facts"] = facts
        row = _row(number, fields)
        if problem is not None:
            row = ImportRow(number, None, problem, row.mac)
        rows.append(row)
    if header is None:
        raise errors.Invalid("the import is empty")
    return rows


def _json_rows(text: str, max_rows: int) -> list[ImportRow]:
    document = loads_json(text)
    items = document.get("devices") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise errors.Invalid('JSON import must be a list or {"devices": [...]}')
    if len(items) > max_rows:
        raise errors.TooLarge(f"the import has {len(items)} rows; at most {max_rows}")
    rows: list[ImportRow] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            rows.append(ImportRow(number, None, "must be an object", None))
            continue
        unknown = sorted(set(item) - set(_KNOWN_COLUMNS))
        if unknown:
            rows.append(
                ImportRow(
                    number,
                    None,
                    f"{printable(unknown[0], 40)}: unknown field "
                    f"(known: {', '.join(_KNOWN_COLUMNS)})",
                    None,
                )
            )
            continue
        rows.append(_row(number, item))
    return rows


def parse_import(body: bytes, content_type: str, max_rows: int) -> list[ImportRow]:
    """CSV (header row: mac|sn, frontend, url, facts, r-<name>...; ``,`` ``;`` or tab) or JSON
    (a list, or ``{"devices": [...]}`` of objects with mac, frontend, url, facts).

    Invalid for a body that is neither; TooLarge over ``max_rows``; a bad row is an
    :class:`ImportRow` with its ``problem`` and never stops the others.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise errors.Invalid("the import is not UTF-8") from None
    stripped = text.lstrip()
    if content_type == "application/json" or (
        content_type != "text/csv" and stripped[:1] in ("[", "{")
    ):
        return _json_rows(text, max_rows)
    return _csv_rows(text, max_rows)


def clean_text(value: str, limit: int = 200) -> str:
    """Text an operator gave (provider names): one line, bounded."""
    if CONTROL_CHARACTERS.search(value) or not value.strip() or len(value) > limit:
        raise errors.Invalid(f"name: 1 to {limit} characters on one line")
    return value.strip()
