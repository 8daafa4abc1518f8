"""Reading an uploaded contacts.csv: encoding, delimiter, CSV records, header aliases.

Real uploads are Outlook "CSV (Windows)" exports as often as the seed's five-column file
(protocol.md §7): UTF-8 with or without BOM, UTF-16 with BOM, or "ANSI" (cp1252); comma, semicolon
or tab separated; quoted fields with embedded delimiters, quotes and line breaks; dozens of
columns we ignore; headers in English or German. This module turns the bytes into records of the
five columns pbxfront uses and leaves the number rules to ``numbers``. Everything here is plain
CPU work on plain values, run in a worker thread by the handler.
"""

from __future__ import annotations

import codecs
import csv
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from services.core import errors

FIELDS = ("surname", "given_name", "company", "business_phone", "mobile_phone")
NAME_FIELDS = ("surname", "given_name", "company")
NUMBER_FIELDS = ("business_phone", "mobile_phone")
# The seed's column names, in the seed's order: what the directory server's script reads.
SEED_HEADER = ("Surname", "Firstname", "Company", "Business Phone", "Mobile Phone")
FIELD_LABELS = dict(zip(FIELDS, SEED_HEADER, strict=True))

# Header names, compared case- and space-insensitively (see header_key). The seed itself spells
# one of them "Busines Phone " (protocol.md §7); Outlook English and German exports use the rest.
_ALIASES = {
    "surname": ("Surname", "Last Name", "Nachname"),
    "given_name": ("Firstname", "First Name", "Vorname"),
    "company": ("Company", "Firma"),
    "business_phone": ("Business Phone", "Busines Phone ", "Telefon geschäftlich"),
    "mobile_phone": ("Mobile Phone", "Mobiltelefon"),
}
EXPECTED_COLUMNS = (
    "a name column (Surname, Firstname, Company; Last Name, First Name; Nachname, Vorname, Firma)"
    " and a number column (Business Phone, Mobile Phone; Telefon geschäftlich, Mobiltelefon)"
)
DELIMITERS = (",", ";", "\t")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
# A name longer than this is not a name; it is refused per row rather than stored.
MAX_FIELD_CHARS = 256
# Characters that never occur in a text export: a file containing them is binary.
_BINARY = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_SPACE = re.compile(r"\s+")


def header_key(name: str) -> str:
    """How a header cell is compared: NFC, case-folded, without any white space."""
    return _SPACE.sub("", unicodedata.normalize("NFC", name)).casefold()


_HEADER_FIELDS = {header_key(alias): field for field, names in _ALIASES.items() for alias in names}


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str


def decode(content: bytes) -> Decoded:
    """The uploaded bytes as text: BOMs first (UTF-8, UTF-16), then strict UTF-8, then cp1252
    (Outlook's "ANSI" on Western systems). Unprocessable for binary content."""
    if content.startswith(codecs.BOM_UTF8):
        encoding, text = "utf-8-sig", _strict(content, "utf-8-sig")
    elif content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, text = "utf-16", _strict(content, "utf-16")
    else:
        try:
            encoding, text = "utf-8", content.decode("utf-8")
        except UnicodeDecodeError:
            encoding, text = "cp1252", _strict(content, "cp1252")
    found = _BINARY.search(text)
    if found is not None:
        where = text.count("\n", 0, found.start()) + 1
        raise errors.Unprocessable(
            f"not a CSV text file: control character {ord(found.group()):#04x} on line {where} "
            "(binary data? UTF-16 needs a byte order mark)"
        )
    return Decoded(text, encoding)


def _strict(content: bytes, encoding: str) -> str:
    try:
        return content.decode(encoding)
    except UnicodeDecodeError as error:
        raise errors.Unprocessable(
            f"not a CSV text file: byte {error.start} cannot be read as {encoding} "
            "(accepted: UTF-8, UTF-16 with BOM, Windows-1252)"
        ) from None


def sniff_delimiter(text: str) -> str:
    """The delimiter of the header record: the most frequent of , ; tab outside quotes."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted:
            if char in counts:
                counts[char] += 1
            elif char == "\n":
                break
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclass(frozen=True)
class Header:
    """Which column of the file holds which field (first match wins)."""

    columns: dict[str, int]
    width: int
    names: tuple[str, ...]

    def describe(self) -> dict[str, str]:
        return {field: self.names[index] for field, index in self.columns.items()}


def map_header(cells: list[str]) -> Header:
    columns: dict[str, int] = {}
    for index, cell in enumerate(cells):
        field = _HEADER_FIELDS.get(header_key(cell.lstrip("\ufeff")))
        if field is not None and field not in columns:
            columns[field] = index
    if not any(f in columns for f in NAME_FIELDS) or not any(f in columns for f in NUMBER_FIELDS):
        shown = ", ".join(f'"{_clean(c)[:40]}"' for c in cells[:8]) + (
            ", …" if len(cells) > 8 else ""
        )
        raise errors.Unprocessable(
            f"the header line names none of the known columns: expected {EXPECTED_COLUMNS}; "
            f"found {shown or 'nothing'}"
        )
    return Header(columns, len(cells), tuple(cells))


@dataclass(frozen=True)
class Record:
    """One CSV record: the line it starts on (1 = the header) and its cells."""

    line: int
    cells: list[str]


@dataclass(frozen=True)
class Table:
    encoding: str
    delimiter: str
    header: Header
    # Read lazily: an Outlook record has ~90 cells, of which five are kept; holding them all
    # for 100,000 records would take hundreds of MB.
    records: Iterator[Record]


EMPTY_FILE = "the file is empty: upload an Outlook or seed contacts.csv"
HEADER_ONLY = "the file has a header line but no contacts"


def read_table(
    content: bytes, max_rows: int, *, max_columns: int = 512, max_cells: int = 5_000_000
) -> Table:
    """Decode, sniff and map the header; the records follow as they are read. Unprocessable when
    the file is not a usable CSV (the message names the line), TooLarge beyond ``max_rows``
    records, ``max_columns`` fields in one record or ``max_cells`` fields in all (all also while
    iterating ``records``)."""
    decoded = decode(content)
    text = decoded.text
    if not text.strip():
        raise errors.Unprocessable(EMPTY_FILE)
    # The header line decides; a longer one is refused by the column bound anyway.
    delimiter = sniff_delimiter(text[:65536].lstrip("\r\n"))
    records = _records(text, delimiter, max_rows, max_columns, max_cells)
    header_record = next(records, None)
    if header_record is None:
        raise errors.Unprocessable(EMPTY_FILE)
    return Table(decoded.encoding, delimiter, map_header(header_record.cells), records)


# One physical line with its ending (universal newlines, as io.StringIO(newline="") splits).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _bounded_lines(text: str, delimiter: str, max_columns: int, max_cells: int) -> Iterator[str]:
    """The physical lines of ``text`` for ``csv.reader``, refusing (TooLarge) a record with more
    than ``max_columns`` fields or a file with more than ``max_cells`` before csv builds the
    record, and before the line is even copied: a line of a million delimiters would otherwise
    become a list of a million cells. Delimiters inside quotes do not count (a record may span
    lines inside quotes)."""
    quoted = False
    fields = 1
    cells = 0
    for line_number, match in enumerate(_LINE.finditer(text), start=1):
        start, end = match.span()
        plain = not quoted and text.find('"', start, end) < 0
        if plain:
            fields += text.count(delimiter, start, end)  # the common case: no copy, no quote
        else:
            for index, part in enumerate(match.group().split('"')):
                if index:
                    quoted = not quoted
                if not quoted:
                    fields += part.count(delimiter)
        if fields > max_columns:
            raise errors.TooLarge(
                f"line {line_number}: more than {max_columns} fields in one record"
            )
        if not quoted:
            cells += fields
            fields = 1
            if cells > max_cells:
                raise errors.TooLarge(
                    f"line {line_number}: more than {max_cells} fields in the file"
                )
        yield match.group()


def _records(
    text: str, delimiter: str, max_rows: int, max_columns: int, max_cells: int
) -> Iterator[Record]:
    # csv's own field size limit (128 KiB) stays: a file that is one unterminated quote is
    # refused with its line number instead of being read as one huge field.
    lines = _bounded_lines(text, delimiter, max_columns, max_cells)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    count = -1  # the header is not a row
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise errors.Unprocessable(f"line {start}: not valid CSV ({error})") from None
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        count += 1
        if count > max_rows:
            raise errors.TooLarge(f"more than {max_rows} contacts in one file")
        yield Record(start, cells)


def _clean(value: str) -> str:
    """A name cell as stored: control characters (line breaks in a name) become one space."""
    return _SPACE.sub(" ", _CONTROL.sub(" ", value)).strip()


@dataclass(frozen=True)
class Fields:
    surname: str
    given_name: str
    company: str
    business_phone: str
    mobile_phone: str


def record_fields(header: Header, record: Record) -> Fields | str:
    """The five fields of a record, or why the record is refused."""
    if len(record.cells) != header.width:
        return f"{len(record.cells)} fields where the header has {header.width}"
    values = {
        field: _clean(record.cells[index]) if index is not None else ""
        for field in FIELDS
        for index in [header.columns.get(field)]
    }
    for field, value in values.items():
        if len(value) > MAX_FIELD_CHARS:
            return f"{FIELD_LABELS[field]}: longer than {MAX_FIELD_CHARS} characters"
    return Fields(**values)
