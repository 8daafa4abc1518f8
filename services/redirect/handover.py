"""The redirect service's domain, in plain functions: who is asking, where it goes, what it is sent.

The pipeline of one device request (protocol.md §4), top to bottom:

1. :func:`device_key` - the device's MAC or hardware id: from a verified client certificate, else
   the ``sn``/``mac``/``hwid`` arguments, else (leniently, [NC]) anything in ``ver`` that looks
   like a MAC or a hardware id;
2. an address that asked for too many unregistered devices is refused before anything is looked
   up (:class:`~services.core.ratelimit.AddressLimiter`);
3. :func:`choose_mapping` - the registered mapping, if exactly one fits;
4. :func:`target_url` and :func:`handover_script` - the script that moves the device to its
   Frontend's staging URL.

Mappings are written through :func:`plan_registration` / :func:`plan_import` (who may write what,
and whether anything changes) with input checked by :func:`check_mapping`; bulk imports are parsed
by :func:`parse_import`. Everything here is testable without HTTP or PostgreSQL.
"""

from __future__ import annotations

import csv
import enum
import io
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core import errors
from services.core.config import RedirectSettings
from services.core.identity import (
    DeviceIdentity,
    IdentityError,
    Proof,
    normalize_device_type,
    normalize_mac,
    parse_hardware_id,
    printable,
)
from services.core.inputs import loads_json
from services.core.scriptlines import comment, rawurlencode, to_crlf

# The paths a factory-new device polls (seed: http://<redirect-host>/redirect.php; protocol.md §1:
# the V10 factory default http://config.innovaphone.com/init).
DEVICE_PATHS = ("/redirect.php", "/init")
# innovaphone's IEEE OUI (00-90-33): preferred when a hardware id (last three MAC bytes) fits
# several registered MACs. [I]
INNOVAPHONE_OUI = "009033"

_FRONTEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PROVIDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_URL = re.compile(r"https?://(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?(/[!-~]*)?")
_FACT_NAME = re.compile(r"r-[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# protocol.md §2: `mod cmd UP1 setvar r-<name> <value>` is one line of space-separated words.
_FACT_VALUE = re.compile(r"[!-~\u00a0-\uffff]{1,200}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_FACTS = 20
MAX_URL = 512

# Within `ver` [NC]: a MAC (with or without separators) or a hardware id, preferably in HW[...].
_VERSION_MAC = re.compile(
    r"(?<![0-9A-Za-z])((?:[0-9A-Fa-f]{2}[-:]){5}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{12})(?![0-9A-Za-z])"
)
_VERSION_HARDWARE_ID = re.compile(
    r"(?<![0-9A-Za-z])([A-Za-z][A-Za-z0-9]{1,15}-[0-9A-Fa-f]{2}-[0-9A-Fa-f]{2}-[0-9A-Fa-f]{2})"
    r"(?![0-9A-Za-z-])"
)
_VERSION_HW = re.compile(r"HW\[([^\]]{0,100})\]", re.IGNORECASE)
# `7.00 dvl-sr1 IP6000[07-60600.03]`: the model is the word before the first bracket.
_VERSION_MODEL = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9]{1,15})\[")


class Outcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    TRANSFERRED = "transferred"
    ERROR = "error"


class RowError(enum.StrEnum):
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    UNKNOWN_FRONTEND = "unknown_frontend"
    OWNED_BY_OTHER_PROVIDER = "owned_by_other_provider"


def owned_by_other_provider(mac: str) -> errors.Conflict:
    return errors.Conflict(
        f"owned_by_other_provider: {mac} is registered by another provider; "
        "its owner can issue a transfer token"
    )


# --- input ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappingInput:
    """What a provider wants for one device: a Frontend id or an explicit URL, and facts."""

    mac: str
    frontend: str | None = None
    url: str | None = None
    facts: Mapping[str, str] = field(default_factory=dict)


def check_mac(value: object) -> str:
    """A MAC (= an innovaphone serial number) in any usual spelling -> ``009033010203``."""
    if not isinstance(value, str):
        raise errors.Invalid("mac: must be a string")
    try:
        return normalize_mac(value)
    except IdentityError as error:
        raise errors.Invalid(f"mac: {error}") from None


def check_provider_id(value: object) -> str:
    if not isinstance(value, str) or not _PROVIDER_ID.fullmatch(value):
        raise errors.Invalid(
            "provider: must be a safe id (letters, digits, '.', '_', '-'; at most 64)"
        )
    return value


def check_frontend_id(value: object) -> str:
    if not isinstance(value, str) or not _FRONTEND_ID.fullmatch(value):
        shown = printable(repr(value), 60)
        raise errors.Invalid(f"frontend: must be a Frontend id such as sb1, not {shown}")
    return value


def check_url(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL or not _URL.fullmatch(value):
        raise errors.Invalid(
            f"url: must be an http(s) URL of at most {MAX_URL} printable characters without "
            "spaces, e.g. https://fe.example/DRIVE/CF0/update/staging.txt"
        )
    return value


def fact_name(name: str) -> str:
    """``type`` or ``r-type`` -> ``r-type`` (protocol.md §2: the redirect service's facts)."""
    candidate = name.strip()
    if not candidate.startswith("r-"):
        candidate = "r-" + candidate
    if not _FACT_NAME.fullmatch(candidate):
        raise errors.Invalid(
            f"facts: {printable(repr(name), 60)} is not a fact name (r-<letters, digits, . _ ->)"
        )
    return candidate


def check_facts(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise errors.Invalid('facts: must be an object such as {"r-type": "IP232"}')
    if len(value) > MAX_FACTS:
        raise errors.Invalid(f"facts: at most {MAX_FACTS}")
    facts: dict[str, str] = {}
    for name, fact_value in value.items():
        key = fact_name(str(name))
        if (
            not isinstance(fact_value, str)
            or not _FACT_VALUE.fullmatch(fact_value)
            or _CONTROL.search(fact_value)
        ):
            raise errors.Invalid(
                f"facts: {key}: the value must be 1 to 200 characters without spaces "
                "(it becomes one word of a device command)"
            )
        facts[key] = fact_value
    return dict(sorted(facts.items()))


def parse_fact_assignments(values: Iterable[str]) -> dict[str, str]:
    """``["r-type=IP232", "site=hq"]`` (CLI, CSV) -> checked facts."""
    pairs: dict[str, str] = {}
    for assignment in values:
        name, sep, value = assignment.partition("=")
        if not sep:
            raise errors.Invalid(f"facts: {printable(repr(assignment), 60)}: expected name=value")
        pairs[name] = value
    return check_facts(pairs)


def check_mapping(
    mac: object, frontend: object = None, url: object = None, facts: object = None
) -> MappingInput:
    """One mapping's input, normalised; Invalid naming the field otherwise."""
    checked_mac = check_mac(mac)
    checked_frontend = None if frontend in (None, "") else check_frontend_id(frontend)
    checked_url = None if url in (None, "") else check_url(url)
    if checked_frontend is None and checked_url is None:
        raise errors.Invalid("frontend: a Frontend id or a url is required")
    return MappingInput(checked_mac, checked_frontend, checked_url, check_facts(facts))


# --- stored mappings and where they point -------------------------------------------------------


@dataclass(frozen=True)
class StoredMapping:
    mac: str
    provider: str
    frontend: str | None
    url: str | None
    facts: Mapping[str, str]

    def same_target(self, wanted: MappingInput) -> bool:
        return (self.frontend, self.url, dict(self.facts)) == (
            wanted.frontend,
            wanted.url,
            dict(wanted.facts),
        )


@dataclass(frozen=True)
class DeviceTarget:
    """A mapping as the device side reads it: with its Frontend and its provider's facts."""

    mac: str
    provider: str
    frontend: str | None
    url: str | None
    facts: Mapping[str, str]
    provider_facts: Mapping[str, str]
    # From the inventory; None when the Frontend named is not (or no longer) there.
    public_address: str | None
    frontend_index: int | None

    def all_facts(self) -> dict[str, str]:
        """The provider's facts, overridden by the mapping's, by name."""
        return dict(sorted({**self.provider_facts, **self.facts}.items()))


def _host(address: str) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    except ValueError:
        pass
    return address


def with_arguments(url: str, arguments: str) -> str:
    """protocol.md §1: the device expands #m/#h/#t/#i; a URL with a query is taken as it is."""
    if "?" in url or not arguments:
        return url
    return f"{url}?{arguments}"


def target_url(
    url: str | None,
    frontend: str | None,
    public_address: str | None,
    frontend_index: int | None,
    settings: RedirectSettings,
) -> str | None:
    """The URL the device is to poll next; None when the mapping's Frontend is unknown."""
    if url:
        return with_arguments(url, settings.url_arguments)
    if frontend is None or public_address is None:
        return None
    base = settings.frontend_url.format(
        public_address=_host(public_address), frontend=frontend, index=frontend_index or 0
    )
    return with_arguments(base, settings.url_arguments)


def handover_script(mac: str, target: str, facts: Mapping[str, str]) -> str:
    """protocol.md §4: the reply a device is known to accept, CRLF, comments first.

    Facts go before the URL change: ``config activate`` switches the update module to the new
    URL, and nothing protocol.md confirms says the lines after it still run. [NC]
    """
    lines = [
        comment(f"pbxfront redirect: hand-over of {mac}"),
        comment(f"to {target}"),
    ]
    lines += [f"mod cmd UP1 setvar {name} {value}" for name, value in sorted(facts.items())]
    lines += [
        f"config add UP1 /url {rawurlencode(target)}",
        "config add UP1 /no-dhcp",
        "config write",
        "config activate",
    ]
    return to_crlf(lines)


def not_registered_reply(label: str) -> str:
    """The same body for unknown devices, devices of any provider whose mapping cannot be used,
    and every other miss, so the answers tell a scanner nothing."""
    return to_crlf([comment(f"pbxfront redirect: device {label} is not registered here")])


def rate_limited_reply() -> str:
    return to_crlf(
        [
            comment(
                "pbxfront redirect: too many lookups of unregistered devices from this address"
            ),
            comment("retry later"),
        ]
    )


def cannot_identify_reply() -> str:
    return to_crlf(
        [
            comment("pbxfront redirect cannot tell which device this is:"),
            comment("use a client certificate or add ?sn=#m&hwid=#h to the redirect URL"),
        ]
    )


# --- identification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKey:
    """Who asks: a MAC, or a hardware id (model + last three MAC bytes), or both."""

    proof: Proof
    mac: str | None
    hardware_id: str | None
    device_type: str | None

    @property
    def suffix(self) -> str:
        if self.mac is not None:
            return self.mac[6:]
        assert self.hardware_id is not None
        return parse_hardware_id(self.hardware_id).suffix

    @property
    def label(self) -> str:
        return self.mac or self.hardware_id or "-"


def identity_arguments(query: Mapping[str, str]) -> dict[str, str]:
    """The URL arguments with lower-cased names (first spelling wins): devices and the seed's
    scripts write ``sn``/``SN`` and ``hwid``/``HWID`` [NC]."""
    result: dict[str, str] = {}
    for name, value in query.items():
        result.setdefault(name.lower(), value)
    return result


def from_version(version: str | None) -> tuple[str | None, str | None, str | None]:
    """(MAC, hardware id, model) found in ``ver`` [NC]: protocol.md §1 gives
    ``7.00 dvl-sr1 IP6000[07-60600.03], Bootcode[145], HW[...]`` and no more, so look in
    ``HW[...]`` first, then anywhere, for something shaped like a MAC or a hardware id."""
    if not version:
        return None, None, None
    text = version[:400]
    model_match = _VERSION_MODEL.search(text)
    model: str | None = None
    if model_match:
        try:
            model = normalize_device_type(model_match.group(1))
        except IdentityError:
            model = None
    places = [m.group(1) for m in _VERSION_HW.finditer(text)] + [text]
    for place in places:
        mac_match = _VERSION_MAC.search(place)
        if mac_match:
            return normalize_mac(mac_match.group(1)), None, model
        hwid_match = _VERSION_HARDWARE_ID.search(place)
        if hwid_match:
            hardware = parse_hardware_id(hwid_match.group(1))
            return None, str(hardware), model or hardware.model
    return None, None, model


def device_key(identity: DeviceIdentity, version: str | None) -> DeviceKey | None:
    """The lookup key: the (checked) identity, else what ``ver`` reveals; None if neither."""
    if identity.mac or identity.hardware_id:
        device_type = identity.device_type
        if device_type is None and identity.hardware_id:
            device_type = parse_hardware_id(identity.hardware_id).model
        return DeviceKey(identity.proof, identity.mac, identity.hardware_id, device_type)
    mac, hardware_id, model = from_version(version)
    if mac or hardware_id:
        return DeviceKey(Proof.CLAIMED, mac, hardware_id, identity.device_type or model)
    return None


def choose_mapping(candidates: Sequence[DeviceTarget], key: DeviceKey) -> DeviceTarget | None:
    """The one mapping for ``key``. By MAC: exact. By hardware id only: the mappings whose MAC
    ends in its three bytes; several -> the one with innovaphone's OUI, else none (ambiguous)."""
    if key.mac is not None:
        return next((c for c in candidates if c.mac == key.mac), None)
    fitting = [c for c in candidates if c.mac.endswith(key.suffix)]
    if len(fitting) > 1:
        fitting = [c for c in fitting if c.mac.startswith(INNOVAPHONE_OUI)]
    return fitting[0] if len(fitting) == 1 else None


# --- writing mappings ---------------------------------------------------------------------------


def plan_registration(
    existing: StoredMapping | None,
    provider: str,
    wanted: MappingInput,
    *,
    transfer_allowed: bool,
) -> Outcome:
    """What registering ``wanted`` for ``provider`` does. Another provider's device needs a valid
    transfer token (``transfer_allowed``); without one: Conflict ``owned_by_other_provider``."""
    if existing is None:
        return Outcome.CREATED
    if existing.provider != provider:
        if not transfer_allowed:
            raise owned_by_other_provider(existing.mac)
        return Outcome.TRANSFERRED
    if existing.same_target(wanted):
        return Outcome.UNCHANGED
    return Outcome.UPDATED


@dataclass(frozen=True)
class ImportRow:
    """One parsed row: ``mapping`` or ``problem`` (an Invalid message)."""

    row: int
    mapping: MappingInput | None
    problem: str | None = None
    # The MAC as far as it could be read, for the result.
    mac: str | None = None


@dataclass
class RowResult:
    row: int
    mac: str | None
    result: Outcome
    error: RowError | None = None
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"row": self.row, "mac": self.mac, "result": self.result.value}
        if self.error is not None:
            data["error"] = self.error.value
            data["message"] = self.message
        return data


def plan_import(
    rows: Sequence[ImportRow],
    existing: Mapping[str, StoredMapping],
    provider: str,
    known_frontends: set[str],
) -> tuple[list[RowResult], list[MappingInput]]:
    """One result per row, in order, and the mappings to write (created or updated ones).

    A MAC seen in an earlier row is a ``duplicate``; another provider's MAC is
    ``owned_by_other_provider`` (imports never transfer); a row identical to what is stored is
    ``unchanged``, so running one import twice changes nothing the second time.
    """
    results: list[RowResult] = []
    writes: list[MappingInput] = []
    first_row: dict[str, int] = {}
    for item in rows:
        if item.mapping is None:
            message = item.problem or "invalid row"
            results.append(RowResult(item.row, item.mac, Outcome.ERROR, RowError.INVALID, message))
            continue
        wanted = item.mapping
        if wanted.mac in first_row:
            results.append(
                RowResult(
                    item.row,
                    wanted.mac,
                    Outcome.ERROR,
                    RowError.DUPLICATE,
                    f"same device as row {first_row[wanted.mac]}",
                )
            )
            continue
        first_row[wanted.mac] = item.row
        if wanted.frontend is not None and wanted.frontend not in known_frontends:
            results.append(
                RowResult(
                    item.row,
                    wanted.mac,
                    Outcome.ERROR,
                    RowError.UNKNOWN_FRONTEND,
                    f"no Frontend {wanted.frontend} in the inventory",
                )
            )
            continue
        try:
            outcome = plan_registration(
                existing.get(wanted.mac), provider, wanted, transfer_allowed=False
            )
        except errors.Conflict as conflict:
            results.append(
                RowResult(
                    item.row,
                    wanted.mac,
                    Outcome.ERROR,
                    RowError.OWNED_BY_OTHER_PROVIDER,
                    str(conflict),
                )
            )
            continue
        results.append(RowResult(item.row, wanted.mac, outcome))
        if outcome in (Outcome.CREATED, Outcome.UPDATED):
            writes.append(wanted)
    return results, writes


# --- bulk import formats ------------------------------------------------------------------------

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
    if _CONTROL.search(value) or not value.strip() or len(value) > limit:
        raise errors.Invalid(f"name: 1 to {limit} characters on one line")
    return value.strip()
