"""An upload from bytes to a checked contact list, and the views of a list: the report, the
difference to the current version, the seed's CSV and LDIF for OpenLDAP. Plain values in, plain
values out; the handler runs :func:`check_upload` and :func:`difference` in a worker thread."""

from __future__ import annotations

import base64
import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.contacts.numbers import Normalizer, NumberError
from services.contacts.parse import (
    DELIMITER_NAMES,
    FIELD_LABELS,
    HEADER_ONLY,
    SEED_HEADER,
    read_table,
    record_fields,
)
from services.core import errors
from services.core.numbering import NumberingPlan


@dataclass(frozen=True)
class Entry:
    """One stored contact, in the columns of ``contact_entries``."""

    line: int
    surname: str
    given_name: str
    company: str
    business_phone: str
    business_e164: str | None
    mobile_phone: str
    mobile_e164: str | None

    def record(self, customer: str, version: int) -> tuple[Any, ...]:
        return (
            customer,
            version,
            self.line,
            self.surname,
            self.given_name,
            self.company,
            self.business_phone,
            self.business_e164,
            self.mobile_phone,
            self.mobile_e164,
        )

    @property
    def identity(self) -> tuple[str, str, str]:
        """Who the entry is, for comparing versions (a file has no ids)."""
        return (self.surname, self.given_name, self.company)

    @property
    def numbers(self) -> tuple[str | None, str | None]:
        return (self.business_e164, self.mobile_e164)

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.given_name, self.surname) if p) or self.company

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "surname": self.surname,
            "given_name": self.given_name,
            "company": self.company,
            "business_phone": self.business_phone,
            "business_e164": self.business_e164,
            "mobile_phone": self.mobile_phone,
            "mobile_e164": self.mobile_e164,
        }


ENTRY_COLUMNS = (
    "customer",
    "version",
    "line",
    "surname",
    "given_name",
    "company",
    "business_phone",
    "business_e164",
    "mobile_phone",
    "mobile_e164",
)


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class CheckedUpload:
    encoding: str
    delimiter: str
    columns: dict[str, str]
    entries: list[Entry]
    rejections: list[Rejection]
    # Records without any phone number (e-mail-only contacts): nothing to look up, not stored.
    skipped: int

    @property
    def rows(self) -> int:
        return len(self.entries) + len(self.rejections) + self.skipped

    def rejected_share(self) -> float:
        checked = len(self.entries) + len(self.rejections)
        return len(self.rejections) / checked if checked else 0.0


def check_upload(
    content: bytes,
    plan: NumberingPlan,
    max_rows: int,
    *,
    max_columns: int = 512,
    max_cells: int = 5_000_000,
) -> CheckedUpload:
    """Read and check a whole file. Unprocessable / TooLarge when the file as a whole is
    unusable; a bad record is a :class:`Rejection` with its line number and reason."""
    table = read_table(content, max_rows, max_columns=max_columns, max_cells=max_cells)
    normalizer = Normalizer(plan)
    entries: list[Entry] = []
    rejections: list[Rejection] = []
    skipped = 0
    for record in table.records:
        fields = record_fields(table.header, record)
        if isinstance(fields, str):
            rejections.append(Rejection(record.line, fields))
            continue
        if not fields.business_phone and not fields.mobile_phone:
            skipped += 1
            continue
        if not (fields.surname or fields.given_name or fields.company):
            rejections.append(Rejection(record.line, "a number without a name or company"))
            continue
        try:
            label = FIELD_LABELS["business_phone"]
            business = normalizer.normalize(fields.business_phone)
            label = FIELD_LABELS["mobile_phone"]
            mobile = normalizer.normalize(fields.mobile_phone)
        except NumberError as error:
            rejections.append(Rejection(record.line, f"{label}: {error}"))
            continue
        entries.append(
            Entry(
                record.line,
                fields.surname,
                fields.given_name,
                fields.company,
                fields.business_phone,
                business,
                fields.mobile_phone,
                mobile,
            )
        )
    if not (entries or rejections or skipped):
        raise errors.Unprocessable(HEADER_ONLY)
    return CheckedUpload(
        table.encoding, table.delimiter, table.header.describe(), entries, rejections, skipped
    )


@dataclass(frozen=True)
class Difference:
    added: int
    changed: int
    removed: int

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def as_json(self) -> dict[str, int]:
        return {"added": self.added, "changed": self.changed, "removed": self.removed}


def difference(old: Iterable[Entry], new: Iterable[Entry]) -> Difference:
    """Entries are matched by name and company (the n-th of equal names with the n-th); a match
    whose normalised numbers differ is changed, the rest added or removed."""

    def grouped(entries: Iterable[Entry]) -> dict[tuple[str, str, str], list[Any]]:
        groups: dict[tuple[str, str, str], list[Any]] = {}
        for entry in entries:
            groups.setdefault(entry.identity, []).append(entry.numbers)
        return groups

    before, after = grouped(old), grouped(new)
    added = changed = removed = 0
    for key in before.keys() | after.keys():
        old_numbers, new_numbers = before.get(key, []), after.get(key, [])
        paired = min(len(old_numbers), len(new_numbers))
        unchanged = Counter(old_numbers) & Counter(new_numbers)
        changed += paired - min(paired, sum(unchanged.values()))
        added += len(new_numbers) - paired
        removed += len(old_numbers) - paired
    return Difference(added, changed, removed)


# --- views -------------------------------------------------------------------------------------


# OWASP "CSV injection": a cell starting with one of these is a formula to spreadsheet programs.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A number as we store it (E.164, or the digits of a short number) is not a formula.
_PLAIN_NUMBER = re.compile(r"\+?[0-9]+")


def neutralise_formula(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would run it as a formula
    (``=cmd|' /C calc'!A0``, ``@SUM(…)``, ``+1+2``, ``-2+3``, a leading tab or CR); E.164
    numbers (``+49…``) stay as they are. Excel and LibreOffice show the ``'`` as text marker."""
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def render_csv(entries: Sequence[Entry]) -> str:
    """The seed's layout, every field quoted, CRLF: what the directory server's script reads.
    Cells a spreadsheet would evaluate are neutralised (:func:`neutralise_formula`)."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(SEED_HEADER)
    for entry in entries:
        writer.writerow(
            tuple(
                neutralise_formula(value)
                for value in (
                    entry.surname,
                    entry.given_name,
                    entry.company,
                    entry.business_e164 or "",
                    entry.mobile_e164 or "",
                )
            )
        )
    return out.getvalue()


# RFC 2849 SAFE-STRING: values outside it are written base64 ("attr:: ...").
_SAFE_STRING = re.compile(
    r"[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*"
)
# RFC 4514 characters escaped in a DN attribute value.
_DN_SPECIAL = re.compile(r'([,+"\\<>;=#])')


def _ldif_line(attribute: str, value: str) -> str:
    if _SAFE_STRING.fullmatch(value) and not value.endswith(" "):
        return f"{attribute}: {value}\n"
    encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
    return f"{attribute}:: {encoded}\n"


def base_dn(customer: str) -> str:
    return "dc=" + _DN_SPECIAL.sub(r"\\\1", customer)


def render_ldif(customer: str, customer_name: str, entries: Sequence[Entry]) -> str:
    """The customer's directory as LDIF for ``ldapadd``: the base entry ``dc=<customer-id>``
    (dcObject + organization) and one inetOrgPerson per contact, ``uid=c<line>`` (the record's
    line in the uploaded file, unique within a version). Numbers are E.164."""
    base = base_dn(customer)
    parts = [
        f"dn: {base}\n",
        "objectClass: top\n",
        "objectClass: dcObject\n",
        "objectClass: organization\n",
        _ldif_line("dc", customer),
        _ldif_line("o", customer_name or customer),
        "\n",
    ]
    for entry in entries:
        name = entry.display_name
        parts.append(f"dn: uid=c{entry.line},{base}\n")
        parts.append("objectClass: top\nobjectClass: person\n")
        parts.append("objectClass: organizationalPerson\nobjectClass: inetOrgPerson\n")
        parts.append(f"uid: c{entry.line}\n")
        parts.append(_ldif_line("cn", name))
        # sn is mandatory for a person; a company-only entry uses its display name.
        parts.append(_ldif_line("sn", entry.surname or name))
        if entry.given_name:
            parts.append(_ldif_line("givenName", entry.given_name))
        if entry.company:
            parts.append(_ldif_line("o", entry.company))
        if entry.business_e164:
            parts.append(_ldif_line("telephoneNumber", entry.business_e164))
        if entry.mobile_e164:
            parts.append(_ldif_line("mobile", entry.mobile_e164))
        parts.append("\n")
    return "".join(parts)


@dataclass
class Report:
    """What an upload answers, as text for curl users or as JSON."""

    customer: str
    outcome: str  # stored | unchanged | dry-run | refused
    upload: CheckedUpload
    message: str
    version: int | None = None
    difference: Difference | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        upload = self.upload
        return {
            "customer": self.customer,
            "outcome": self.outcome,
            "message": self.message,
            "version": self.version,
            "accepted": len(upload.entries),
            "rejected": len(upload.rejections),
            "skipped_without_number": upload.skipped,
            "encoding": upload.encoding,
            "delimiter": DELIMITER_NAMES[upload.delimiter],
            "columns": upload.columns,
            "difference": self.difference.as_json() if self.difference else None,
            "rejections": [r.as_json() for r in upload.rejections],
        }

    def as_text(self) -> str:
        upload = self.upload
        lines = [
            f"contacts.csv for {self.customer}: accepted {len(upload.entries)}, "
            f"rejected {len(upload.rejections)}"
            + (f", skipped {upload.skipped} without any number" if upload.skipped else ""),
            f"read as {upload.encoding}, {DELIMITER_NAMES[upload.delimiter]}-separated; columns: "
            + ", ".join(f"{FIELD_LABELS[k]} = {v!r}" for k, v in upload.columns.items()),
        ]
        if self.difference is not None:
            d = self.difference
            lines.append(
                f"difference to the current version: added {d.added}, changed {d.changed}, "
                f"removed {d.removed}"
            )
        lines.append(self.message)
        lines.extend(f"line {r.line}: {r.reason}" for r in upload.rejections)
        return "\n".join(lines) + "\n"
