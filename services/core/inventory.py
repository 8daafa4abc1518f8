"""The inventory: Frontends, customers, devices (CPE, customer PBXs) and layered update variables.

The seed's vocabulary: a *Frontend* (``sb1``) serves customers; a *customer* (customer id
``Kuenkel00001``) has a PBX and CPE; a *device* is known by its MAC and hardware id
(``IP232-01-02-03``) and registers under its *CPE id* (``Kuenkel00001-001``). *Update variables*
(``#(h-domain)`` in the scripts) resolve in layers, later wins::

    global < frontend < customer < device_class < device_type < device

Two ways in, one set of rules:

- the declarative inventory file (``config/inventory.example.toml`` documents the format):
  :func:`parse_inventory` / :func:`read_inventory_file` -> :class:`Inventory` ->
  :func:`apply_inventory` (what is not in the file is removed); :func:`render_inventory` writes the
  same format back;
- :class:`InventoryRepository` for the admin API and the services, one row at a time.

Every problem is an :class:`InventoryError` listing *all* problems found, each
``"file: entry: field: why"``; nothing is changed then. Every committed change bumps
:func:`inventory_version` and sends ``NOTIFY pbxfront_inventory`` (both done by triggers in
``migrations/001_inventory.sql``, so no writer can forget them). Secret values (customer passwords,
variables flagged secret) never appear in a ``repr``, a :class:`Change` or an error message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg

from services.core import audit, db
from services.core.identity import (
    IdentityError,
    normalize_device_type,
    normalize_hardware_id,
    normalize_mac,
    parse_hardware_id,
    printable,
)

NOTIFY_CHANNEL = "pbxfront_inventory"
# Taken (transaction-level) by every inventory writer so appliers and API writes serialise.
INVENTORY_LOCK_ID = 0x70627869  # "pbxi"

LAYERS = ("global", "frontend", "customer", "device_class", "device_type", "device")
DEVICE_CLASSES = ("phone", "gateway", "pbx")

# Same rule as settings.frontend in core/config.py.
_FRONTEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# protocol.md §8: customer ids are "safe" ASCII; CPE ids are built from them. Never a path.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VARIABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z){_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_COUNTRY_CODE = re.compile(r"[1-9][0-9]{0,2}")
# protocol.md §2: scripts are line based; a control character in a value would inject a command.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_TEXT = 200
_MAX_VALUE = 4096
_MAX_LIMIT = 10000

_T = TypeVar("_T")

ChangeAction = Literal["add", "change", "remove"]
ChangeKind = Literal["frontend", "customer", "device", "variable"]


class InventoryError(Exception):
    """Invalid inventory data or a write the database state does not allow.

    ``problems`` lists every problem found, each ``"file: entry: field: why"`` (the file part only
    for inventory files). Raised before anything is changed.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frontend:
    id: str
    public_address: str
    internal_address: str
    # The seed's sbc index: the Frontend is sbc<index>.<h-domain> in DNS.
    index: int


@dataclass(frozen=True)
class Customer:
    id: str
    frontend: str
    name: str
    # The customer's e-mail domain (the customer PBX's System Name).
    system_name: str
    # Digits only: "49", "7031" (without the national prefix).
    country_code: str
    area_code: str
    international_prefix: str = "00"
    national_prefix: str = "0"
    # The PBX's own number within the area code, if it has one.
    subscriber_number: str | None = None
    registration_password: str | None = dataclasses.field(default=None, repr=False)
    login_password: str | None = dataclasses.field(default=None, repr=False)
    # Render secrets for devices that only claim their identity (URL arguments).
    allow_claimed_secrets: bool = False
    allow_anonymous_backup: bool = False
    allow_anonymous_contacts: bool = False


@dataclass(frozen=True)
class Device:
    mac: str  # normalised: 12 lower-case hex digits
    device_type: str  # upper case: IP232, IPVA
    device_class: str  # phone | gateway | pbx
    customer: str
    # Empty: derived from device_type and mac (IP232-01-02-03).
    hardware_id: str = ""
    cpe_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Variable:
    layer: str
    # '' (global), Frontend id, customer id, device class, device type or MAC, by layer.
    scope: str
    name: str
    value: str = dataclasses.field(repr=False)
    secret: bool = False

    @property
    def key(self) -> str:
        """``global/h-domain``, ``frontend/sb1/h-sbcextip``, ``device/009033010203/h-ntp``."""
        if self.layer == "global":
            return f"global/{self.name}"
        return f"{self.layer}/{self.scope}/{self.name}"

    def __repr__(self) -> str:
        shown = "***" if self.secret else repr(self.value)
        return (
            f"Variable(layer={self.layer!r}, scope={self.scope!r}, name={self.name!r}, "
            f"value={shown}, secret={self.secret!r})"
        )


def _layer_rank(layer: str) -> int:
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


@dataclass(frozen=True)
class Inventory:
    """The whole desired (or current) state, in a canonical order so ``==`` compares content."""

    frontends: tuple[Frontend, ...] = ()
    customers: tuple[Customer, ...] = ()
    devices: tuple[Device, ...] = ()
    variables: tuple[Variable, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "frontends", tuple(sorted(self.frontends, key=lambda f: f.id)))
        object.__setattr__(self, "customers", tuple(sorted(self.customers, key=lambda c: c.id)))
        object.__setattr__(self, "devices", tuple(sorted(self.devices, key=lambda d: d.mac)))
        object.__setattr__(
            self,
            "variables",
            tuple(sorted(self.variables, key=lambda v: (_layer_rank(v.layer), v.scope, v.name))),
        )


@dataclass(frozen=True)
class Scope:
    """An inventory file's explicit ``[scope]``: what a prune may remove besides what the file
    names and the customers it owns. ``shared``: the global, device-class and device-type
    variable layers (a file otherwise prunes only the layers and scopes it sets)."""

    customers: tuple[str, ...] = ()
    frontends: tuple[str, ...] = ()
    shared: bool = False


@dataclass(frozen=True)
class Change:
    action: ChangeAction
    kind: ChangeKind
    key: str
    # Names of the fields that differ (for "change"); never their values.
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        symbol = {"add": "+", "change": "~", "remove": "-"}[self.action]
        text = f"{symbol} {self.kind} {printable(self.key)}"
        if self.fields:
            text += f" ({', '.join(self.fields)})"
        return text


@dataclass(frozen=True)
class ResolvedVariable:
    name: str
    value: str = dataclasses.field(repr=False)
    secret: bool
    # Where the value came from, to explain a rendered script.
    layer: str
    scope: str


# --- field rules (one set for files and the API) -----------------------------------------------


class _Invalid(Exception):
    """One field's problem; the message is the "why"."""


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    return type(value).__name__


def _describe(value: object) -> str:
    if isinstance(value, str | int | float | bool):
        return f"{_type_name(value)} {printable(repr(value), 60)}"
    return _type_name(value)


def _string(value: object, *, reveal: bool = True) -> str:
    if value is None:
        raise _Invalid("missing (required)")
    if not isinstance(value, str):
        shown = _describe(value) if reveal else _type_name(value)
        raise _Invalid(f"must be a string, not {shown}")
    return value


def _text(value: object, limit: int = _MAX_TEXT) -> str:
    text = _string(value)
    if _CONTROL.search(text):
        raise _Invalid("must not contain control characters")
    if len(text) > limit:
        raise _Invalid(f"must be at most {limit} characters")
    return text


def _pattern(regex: re.Pattern[str], rule: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _string(value)
        if not regex.fullmatch(text):
            raise _Invalid(f"{rule}, not {printable(repr(text), 80)}")
        return text

    return check


_frontend_id = _pattern(
    _FRONTEND_ID, "must be a safe id (letters, digits, '.', '_', '-'; at most 63) such as sb1"
)
_safe_id = _pattern(
    _SAFE_ID,
    "must be a safe id (letters, digits, '.', '_', '-', starting with a letter or digit; "
    "at most 64)",
)
_country_code = _pattern(_COUNTRY_CODE, 'must be the country code in digits, e.g. "49"')
_area_code = _pattern(
    re.compile(r"[0-9]{0,8}"), 'must be digits without the national prefix, e.g. "7031"'
)
_international_prefix = _pattern(re.compile(r"[0-9]{1,4}"), 'must be digits, e.g. "00"')
_national_prefix = _pattern(re.compile(r"[0-9]{0,4}"), 'must be digits or empty, e.g. "0"')
_subscriber_number = _pattern(re.compile(r"[0-9]{1,15}"), "must be 1 to 15 digits")
_domain = _pattern(_DOMAIN, "must be a DNS domain such as customer.example")


def _address(value: object) -> str:
    text = _string(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _DOMAIN.fullmatch(text):
        raise _Invalid(f"must be an IP address or a host name, not {printable(repr(text), 80)}")
    return text


def _integer(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if value is None:
            raise _Invalid("missing (required)")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, not {_describe(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be {low}..{high}")
        return value

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, not {_describe(value)}")
    return value


def _password(value: object) -> str:
    text = _string(value, reveal=False)  # never echo a secret
    # Passwords go into space-separated device commands (protocol.md §2).
    if not text or len(text) > 128 or re.search(r"\s", text) or _CONTROL.search(text):
        raise _Invalid("must be 1 to 128 characters without spaces or control characters")
    return text


def _mac(value: object) -> str:
    try:
        return normalize_mac(_string(value))
    except IdentityError as error:
        raise _Invalid(str(error)) from None


def _device_type(value: object) -> str:
    try:
        return normalize_device_type(_string(value))
    except IdentityError as error:
        raise _Invalid(str(error)) from None


def _device_class(value: object) -> str:
    text = _string(value)
    if text not in DEVICE_CLASSES:
        raise _Invalid(f"must be one of {', '.join(DEVICE_CLASSES)}, not {printable(repr(text))}")
    return text


def _variable_name(value: object) -> str:
    return _pattern(
        _VARIABLE_NAME,
        "must be a variable name (letters, digits, '.', '_', '-'; at most 64)",
    )(value)


def _variable_value(value: object, *, reveal: bool = True) -> str:
    text = _string(value, reveal=reveal)
    if _CONTROL.search(text):
        raise _Invalid("must not contain control characters (scripts are line based)")
    if len(text) > _MAX_VALUE:
        raise _Invalid(f"must be at most {_MAX_VALUE} characters")
    return text


def _optional(check: Callable[[object], _T]) -> Callable[[object], _T | None]:
    def wrapped(value: object) -> _T | None:
        return None if value is None else check(value)

    return wrapped


def _optional_text(value: object) -> str | None:
    text = None if value is None else _text(value)
    return text or None  # "" and absent mean the same: no name


class _FieldCheck:
    """Runs field rules, collecting (field, why) instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def __call__(self, field: str, check: Callable[[object], _T], value: object) -> _T:
        try:
            return check(value)
        except _Invalid as error:
            self.problems.append((field, str(error)))
            return value  # type: ignore[return-value]  # discarded: a problem was recorded


def _check_frontend(frontend: Frontend) -> tuple[Frontend, list[tuple[str, str]]]:
    check = _FieldCheck()
    result = Frontend(
        id=check("id", _frontend_id, frontend.id),
        public_address=check("public_address", _address, frontend.public_address),
        internal_address=check("internal_address", _address, frontend.internal_address),
        index=check("index", _integer(0, 9999), frontend.index),
    )
    return result, check.problems


def _check_customer(customer: Customer) -> tuple[Customer, list[tuple[str, str]]]:
    check = _FieldCheck()
    result = Customer(
        id=check("id", _safe_id, customer.id),
        frontend=check("frontend", _frontend_id, customer.frontend),
        name=check("name", _text, customer.name),
        system_name=check("system_name", _domain, customer.system_name),
        country_code=check("country_code", _country_code, customer.country_code),
        area_code=check("area_code", _area_code, customer.area_code),
        international_prefix=check(
            "international_prefix", _international_prefix, customer.international_prefix
        ),
        national_prefix=check("national_prefix", _national_prefix, customer.national_prefix),
        subscriber_number=check(
            "subscriber_number", _optional(_subscriber_number), customer.subscriber_number
        ),
        registration_password=check(
            "registration_password", _optional(_password), customer.registration_password
        ),
        login_password=check("login_password", _optional(_password), customer.login_password),
        allow_claimed_secrets=check(
            "allow_claimed_secrets", _boolean, customer.allow_claimed_secrets
        ),
        allow_anonymous_backup=check(
            "allow_anonymous_backup", _boolean, customer.allow_anonymous_backup
        ),
        allow_anonymous_contacts=check(
            "allow_anonymous_contacts", _boolean, customer.allow_anonymous_contacts
        ),
    )
    return result, check.problems


def _check_device(device: Device) -> tuple[Device, list[tuple[str, str]]]:
    check = _FieldCheck()
    mac = check("mac", _mac, device.mac)
    device_type = check("type", _device_type, device.device_type)
    identity_ok = not check.problems
    hardware_id = device.hardware_id
    if hardware_id in ("", None):
        if identity_ok:
            derived = f"{device_type}-{mac[6:8]}-{mac[8:10]}-{mac[10:12]}"
            try:
                hardware_id = normalize_hardware_id(derived)
            except IdentityError:
                check.problems.append(
                    (
                        "hardware_id",
                        f"cannot be derived from type {device_type}; "
                        "give the device's hardware id (NetBIOS name)",
                    )
                )
    else:
        try:
            parsed = parse_hardware_id(_string(hardware_id))
        except (IdentityError, _Invalid) as error:
            check.problems.append(("hardware_id", str(error)))
        else:
            hardware_id = str(parsed)
            if identity_ok and not parsed.matches_mac(mac):
                check.problems.append(
                    (
                        "hardware_id",
                        f"{hardware_id} does not belong to mac {mac} (a hardware id ends in the "
                        f"MAC's last three bytes: {mac[6:8]}-{mac[8:10]}-{mac[10:12]})",
                    )
                )
    result = Device(
        mac=mac,
        device_type=device_type,
        device_class=check("class", _device_class, device.device_class),
        customer=check("customer", _safe_id, device.customer),
        hardware_id=hardware_id,
        cpe_id=check("cpe_id", _optional(_safe_id), device.cpe_id),
        name=check("name", _optional_text, device.name),
    )
    return result, check.problems


def _normalize_scope(layer: str, scope: object) -> str:
    if layer == "global":
        if scope not in ("", None):
            raise _Invalid("must be empty for the global layer")
        return ""
    if layer == "frontend":
        return _frontend_id(scope)
    if layer == "customer":
        return _safe_id(scope)
    if layer == "device_class":
        return _device_class(scope)
    if layer == "device_type":
        return _device_type(scope)
    return _mac(scope)


def _check_layer(value: object) -> str:
    text = _string(value)
    if text not in LAYERS:
        raise _Invalid(f"must be one of {', '.join(LAYERS)}, not {printable(repr(text))}")
    return text


def _check_variable(variable: Variable) -> tuple[Variable, list[tuple[str, str]]]:
    check = _FieldCheck()
    layer = check("layer", _check_layer, variable.layer)
    scope = variable.scope
    if layer in LAYERS:
        scope = check("scope", lambda value: _normalize_scope(layer, value), variable.scope)
    result = Variable(
        layer=layer,
        scope=scope,
        name=check("name", _variable_name, variable.name),
        value=check(
            "value",
            lambda value: _variable_value(value, reveal=variable.secret is not True),
            variable.value,
        ),
        secret=check("secret", _boolean, variable.secret),
    )
    return result, check.problems


def _problem(source: str, entry: str, field: str, why: str) -> str:
    return ": ".join(part for part in (source, entry, field, why) if part)


# --- cross checks shared by files and Inventory objects -----------------------------------------


class _Claims:
    """First holder of each key, for duplicate detection with a pointer to the first entry."""

    def __init__(self) -> None:
        self._holders: dict[object, str] = {}

    def claim(self, key: object, label: str) -> str | None:
        holder = self._holders.get(key)
        if holder is None:
            self._holders[key] = label
        return holder


@dataclass
class _Checked:
    """Validated entries with the labels problems use (``devices[2] (mac …)`` or ``device …``)."""

    source: str
    problems: list[str] = dataclasses.field(default_factory=list)
    frontends: list[tuple[str, Frontend]] = dataclasses.field(default_factory=list)
    customers: list[tuple[str, Customer]] = dataclasses.field(default_factory=list)
    devices: list[tuple[str, Device]] = dataclasses.field(default_factory=list)
    variables: list[Variable] = dataclasses.field(default_factory=list)
    # Ids seen with a valid id field (even if the entry has other problems) and the references
    # to check against them.
    frontend_ids: set[str] = dataclasses.field(default_factory=set)
    customer_ids: set[str] = dataclasses.field(default_factory=set)
    device_macs: set[str] = dataclasses.field(default_factory=set)
    frontend_references: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    customer_references: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, entry: str, field: str, why: str) -> None:
        self.problems.append(_problem(self.source, entry, field, why))

    def add_all(self, entry: str, problems: Iterable[tuple[str, str]], prefix: str = "") -> None:
        for field, why in problems:
            self.add(entry, f"{prefix}{field}", why)

    def frontend(
        self, label: str, frontend: Frontend, frontend_ids: _Claims, indexes: _Claims
    ) -> str | None:
        """Validate and keep one Frontend; its id if kept (valid and not a duplicate)."""
        normalized, problems = _check_frontend(frontend)
        self.add_all(label, problems)
        bad = {field for field, _ in problems}
        if "id" not in bad:
            first = frontend_ids.claim(normalized.id.lower(), label)
            if first is not None:
                self.add(label, "id", f"duplicate of {first}")
                return None
            self.frontend_ids.add(normalized.id)
        if "index" not in bad:
            first = indexes.claim(normalized.index, label)
            if first is not None:
                self.add(label, "index", f"{normalized.index} is also the index of {first}")
        if problems:
            return None
        self.frontends.append((label, normalized))
        return normalized.id

    def customer(self, label: str, customer: Customer, customer_ids: _Claims) -> str | None:
        """Validate and keep one customer; its id if kept (valid and not a duplicate)."""
        normalized, problems = _check_customer(customer)
        self.add_all(label, problems)
        bad = {field for field, _ in problems}
        if "id" not in bad:
            first = customer_ids.claim(normalized.id.lower(), label)
            if first is not None:
                self.add(label, "id", f"duplicate of {first}")
                return None
            self.customer_ids.add(normalized.id)
        if "frontend" not in bad:
            self.frontend_references.append((label, normalized.frontend))
        if problems:
            return None
        self.customers.append((label, normalized))
        return normalized.id

    def device(
        self, label: str, device: Device, macs: _Claims, hardware_ids: _Claims, cpe_ids: _Claims
    ) -> str | None:
        """Validate and keep one device; its MAC if kept (valid and not a duplicate)."""
        normalized, problems = _check_device(device)
        self.add_all(label, problems)
        bad = {field for field, _ in problems}
        if "mac" not in bad:
            first = macs.claim(normalized.mac, label)
            if first is not None:
                self.add(label, "mac", f"duplicate of {first}")
                return None
            self.device_macs.add(normalized.mac)
        if "hardware_id" not in bad and normalized.hardware_id:
            first = hardware_ids.claim(normalized.hardware_id, label)
            if first is not None:
                self.add(label, "hardware_id", f"{normalized.hardware_id} is also used by {first}")
        if "cpe_id" not in bad and normalized.cpe_id is not None:
            first = cpe_ids.claim(normalized.cpe_id, label)
            if first is not None:
                self.add(label, "cpe_id", f"{normalized.cpe_id} is also used by {first}")
        if "customer" not in bad:
            self.customer_references.append((label, normalized.customer))
        if problems:
            return None
        self.devices.append((label, normalized))
        return normalized.mac

    def references(self) -> None:
        """Customers name existing Frontends, devices existing customers (entries with other
        problems count as existing, so one mistake is reported once)."""
        for label, frontend_id in self.frontend_references:
            if frontend_id not in self.frontend_ids:
                self.add(label, "frontend", f"no frontend {frontend_id!r} in this inventory")
        for label, customer_id in self.customer_references:
            if customer_id not in self.customer_ids:
                self.add(label, "customer", f"no customer {customer_id!r} in this inventory")

    def inventory(self) -> Inventory:
        if self.problems:
            raise InventoryError(self.problems)
        return Inventory(
            frontends=tuple(frontend for _, frontend in self.frontends),
            customers=tuple(customer for _, customer in self.customers),
            devices=tuple(device for _, device in self.devices),
            variables=tuple(self.variables),
        )


def validate_inventory(inventory: Inventory, source: str = "") -> Inventory:
    """The normalised inventory, or InventoryError listing every problem (for Inventory objects
    built in code, e.g. by the admin API; files go through :func:`parse_inventory`)."""
    checked = _Checked(source)
    frontend_ids, indexes, customer_ids = _Claims(), _Claims(), _Claims()
    macs, hardware_ids, cpe_ids = _Claims(), _Claims(), _Claims()
    for frontend in inventory.frontends:
        checked.frontend(f"frontend {printable(frontend.id)}", frontend, frontend_ids, indexes)
    for customer in inventory.customers:
        checked.customer(f"customer {printable(customer.id)}", customer, customer_ids)
    for device in inventory.devices:
        try:
            label = f"device {_mac(device.mac)}"
        except _Invalid:
            label = f"device {printable(device.mac)}"
        checked.device(label, device, macs, hardware_ids, cpe_ids)
    checked.references()
    owners = {
        "frontend": checked.frontend_ids,
        "customer": checked.customer_ids,
        "device": checked.device_macs,
    }
    keys = _Claims()
    for variable in inventory.variables:
        normalized, problems = _check_variable(variable)
        label = f"variable {printable(variable.key)}"
        checked.add_all(label, problems)
        if problems:
            continue
        if keys.claim(normalized.key, label) is not None:
            checked.add(label, "", "duplicate")
            continue
        scopes = owners.get(normalized.layer)
        if scopes is not None and normalized.scope not in scopes:
            checked.add(
                label, "scope", f"no {normalized.layer} {normalized.scope!r} in this inventory"
            )
            continue
        checked.variables.append(normalized)
    return checked.inventory()


# --- the file format ---------------------------------------------------------------------------

_TOP_KEYS = (
    "variables",
    "frontends",
    "customers",
    "devices",
    "device_classes",
    "device_types",
    "scope",
)
# TOML key -> dataclass field, per entry kind; "variables" is allowed in every entry.
_FRONTEND_KEYS = {
    "id": "id",
    "public_address": "public_address",
    "internal_address": "internal_address",
    "index": "index",
}
_CUSTOMER_KEYS = {field.name: field.name for field in dataclasses.fields(Customer)}
_DEVICE_KEYS = {
    "mac": "mac",
    "hardware_id": "hardware_id",
    "type": "device_type",
    "class": "device_class",
    "customer": "customer",
    "cpe_id": "cpe_id",
    "name": "name",
}
_REQUIRED = {
    "frontend": ("id", "public_address", "internal_address", "index"),
    "customer": ("id", "frontend", "name", "system_name", "country_code", "area_code"),
    "device": ("mac", "type", "class", "customer"),
}


def _known(keys: Iterable[str]) -> str:
    return f"unknown key (known here: {', '.join(keys)})"


def _entry_label(array: str, position: int, raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if isinstance(value, str):
        return f"{array}[{position}] ({key} {printable(value, 80)})"
    return f"{array}[{position}]"


def _entry_arguments(
    checked: _Checked, label: str, raw: Mapping[str, Any], keys: Mapping[str, str], kind: str
) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "variables":
            continue
        if key not in keys:
            checked.add(label, printable(key, 80), _known([*keys, "variables"]))
            continue
        arguments[keys[key]] = value
    for key in _REQUIRED[kind]:
        if key not in raw:
            # The field rules report the missing value.
            arguments[keys[key]] = None
    return arguments


def _parse_variables(
    checked: _Checked,
    raw: object,
    *,
    layer: str,
    scope: str,
    entry: str,
    prefix: str,
    keep: bool,
) -> None:
    """``name = "value"`` or ``name = { value = "…", secret = true }`` entries of one scope."""
    if not isinstance(raw, Mapping):
        checked.add(entry, prefix.rstrip("."), f"must be a table, not {_describe(raw)}")
        return
    for name, item in raw.items():
        field = f"{prefix}{printable(name, 80)}"
        # Any: whatever TOML holds; the field rules check the types.
        secret: Any = False
        value: Any = item
        if isinstance(item, Mapping):
            for key in item:
                if key not in ("value", "secret"):
                    checked.add(entry, f"{field}.{printable(key, 80)}", _known(("value", "secret")))
            value = item.get("value")
            secret = item.get("secret", False)
        normalized, problems = _check_variable(Variable(layer, scope, name, value, secret))
        for problem_field, why in problems:
            where = {"name": field, "value": field, "secret": f"{field}.secret"}.get(problem_field)
            if where is None:  # layer/scope are reported for the owning entry
                continue
            checked.add(entry, where, why)
        if keep and not problems:
            checked.variables.append(normalized)


def _parse_array(
    data: Mapping[str, Any], name: str, checked: _Checked
) -> list[tuple[str, Mapping[str, Any]]]:
    raw = data.get(name, [])
    if not isinstance(raw, list):
        checked.add(name, "", f"must be an array of tables ([[{name}]]), not {_describe(raw)}")
        return []
    entries: list[tuple[str, Mapping[str, Any]]] = []
    key = "mac" if name == "devices" else "id"
    for position, item in enumerate(raw):
        if not isinstance(item, Mapping):
            checked.add(f"{name}[{position}]", "", f"must be a table, not {_describe(item)}")
            continue
        entries.append((_entry_label(name, position, item, key), item))
    return entries


_SCOPE_KEYS = ("customers", "frontends", "shared")


def _parse_scope(data: Mapping[str, Any], checked: _Checked) -> Scope | None:
    """``[scope]``: what ``inventory apply --prune`` may remove beyond what the file names."""
    if "scope" not in data:
        return None
    raw = data["scope"]
    if not isinstance(raw, Mapping):
        checked.add("scope", "", f"must be a table, not {_describe(raw)}")
        return None
    for key in raw:
        if key not in _SCOPE_KEYS:
            checked.add("scope", printable(key, 80), _known(_SCOPE_KEYS))
    lists: dict[str, tuple[str, ...]] = {}
    for key, rule in (("customers", _safe_id), ("frontends", _frontend_id)):
        items = raw.get(key, [])
        if not isinstance(items, list):
            checked.add("scope", key, f"must be an array of ids, not {_describe(items)}")
            items = []
        good: list[str] = []
        for position, item in enumerate(items):
            try:
                good.append(rule(item))
            except _Invalid as error:
                checked.add("scope", f"{key}[{position}]", str(error))
        lists[key] = tuple(good)
    shared = raw.get("shared", False)
    if not isinstance(shared, bool):
        checked.add("scope", "shared", f"must be true or false, not {_describe(shared)}")
        shared = False
    return Scope(customers=lists["customers"], frontends=lists["frontends"], shared=shared)


def _parse_scoped_tables(data: Mapping[str, Any], name: str, layer: str, checked: _Checked) -> None:
    """``[device_classes.<class>.variables]`` / ``[device_types.<TYPE>.variables]``."""
    raw = data.get(name, {})
    if not isinstance(raw, Mapping):
        checked.add(name, "", f"must be a table, not {_describe(raw)}")
        return
    seen = _Claims()
    for key, table in raw.items():
        entry = f"{name}.{printable(key, 80)}"
        try:
            scope = _normalize_scope(layer, key)
        except _Invalid as error:
            checked.add(entry, "", str(error))
            continue
        first = seen.claim(scope, entry)
        if first is not None:
            checked.add(entry, "", f"duplicate of {first}")
            continue
        if not isinstance(table, Mapping):
            checked.add(entry, "", f"must be a table, not {_describe(table)}")
            continue
        for unknown in table:
            if unknown != "variables":
                checked.add(entry, printable(unknown, 80), _known(("variables",)))
        if "variables" in table:
            _parse_variables(
                checked,
                table["variables"],
                layer=layer,
                scope=scope,
                entry=entry,
                prefix="variables.",
                keep=True,
            )


def _entry_variables(
    checked: _Checked, raw: Mapping[str, Any], label: str, layer: str, scope: str | None
) -> None:
    """An entry's ``[<array>.variables]``; kept only with a valid, unique entry (``scope``)."""
    if "variables" in raw:
        _parse_variables(
            checked,
            raw["variables"],
            layer=layer,
            scope=scope or "",
            entry=label,
            prefix="variables.",
            keep=scope is not None,
        )


def parse_inventory(text: str, source: str) -> Inventory:
    """Parse an inventory file's text; InventoryError lists every problem (``source`` names it)."""
    return parse_inventory_scoped(text, source)[0]


def parse_inventory_scoped(
    text: str, source: str, *, references: bool = True
) -> tuple[Inventory, Scope | None]:
    """The inventory and its ``[scope]`` table (None without one). With ``references=False``
    customers may name Frontends the file lacks (one file of a folder, checked against the
    other files and the database by the applier)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InventoryError([_problem(source, "", "", f"invalid TOML: {error}")]) from None
    checked = _Checked(source)
    file_scope = _parse_scope(data, checked)
    for key in data:
        if key not in _TOP_KEYS:
            checked.add(printable(key, 80), "", _known(_TOP_KEYS))

    if "variables" in data:
        _parse_variables(
            checked,
            data["variables"],
            layer="global",
            scope="",
            entry="variables",
            prefix="",
            keep=True,
        )
    _parse_scoped_tables(data, "device_classes", "device_class", checked)
    _parse_scoped_tables(data, "device_types", "device_type", checked)

    frontend_ids, indexes = _Claims(), _Claims()
    for label, raw in _parse_array(data, "frontends", checked):
        arguments = _entry_arguments(checked, label, raw, _FRONTEND_KEYS, "frontend")
        scope = checked.frontend(label, Frontend(**arguments), frontend_ids, indexes)
        _entry_variables(checked, raw, label, "frontend", scope)

    customer_ids = _Claims()
    for label, raw in _parse_array(data, "customers", checked):
        arguments = _entry_arguments(checked, label, raw, _CUSTOMER_KEYS, "customer")
        scope = checked.customer(label, Customer(**arguments), customer_ids)
        _entry_variables(checked, raw, label, "customer", scope)

    macs, hardware_ids, cpe_ids = _Claims(), _Claims(), _Claims()
    for label, raw in _parse_array(data, "devices", checked):
        arguments = _entry_arguments(checked, label, raw, _DEVICE_KEYS, "device")
        scope = checked.device(label, Device(**arguments), macs, hardware_ids, cpe_ids)
        _entry_variables(checked, raw, label, "device", scope)

    if not references:
        # The applier checks these against the other files and the database.
        checked.frontend_references = []
    checked.references()
    return checked.inventory(), file_scope


def read_inventory_file(path: Path) -> Inventory:
    """Read and parse an inventory file; problems are prefixed with the path."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InventoryError([_problem(source, "", "", f"cannot read: {error.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InventoryError(
            [_problem(source, "", "", f"not UTF-8 (byte {error.start})")]
        ) from None
    return parse_inventory(text, source)


def _toml_string(value: str) -> str:
    """A TOML basic string: quote, backslash and every control character escaped (TOML 1.0)."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _toml_string(value)


def _render_fields(lines: list[str], pairs: Iterable[tuple[str, str | int | bool | None]]) -> None:
    for key, value in pairs:
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")


def _render_variables(lines: list[str], header: str, variables: Sequence[Variable]) -> None:
    if not variables:
        return
    lines.extend(["", header])
    for variable in sorted(variables, key=lambda v: v.name):
        value = _toml_string(variable.value)
        if variable.secret:
            value = f"{{ value = {value}, secret = true }}"
        lines.append(f"{_toml_key(variable.name)} = {value}")


def render_inventory(inventory: Inventory) -> str:
    """The inventory in the file format; ``parse_inventory`` of the result equals ``inventory``.

    Secrets are written in clear text: the result is an inventory file, to be kept like one.
    Raises InventoryError for an inventory that could not be parsed back (see validate_inventory).
    """
    inventory = validate_inventory(inventory)
    scoped: dict[tuple[str, str], list[Variable]] = {}
    for variable in inventory.variables:
        scoped.setdefault((variable.layer, variable.scope), []).append(variable)

    def variables_of(layer: str, scope: str) -> list[Variable]:
        return scoped.get((layer, scope), [])

    lines = ["# pbxfront inventory; the format is documented in config/inventory.example.toml"]
    _render_variables(lines, "[variables]", variables_of("global", ""))
    for (layer, scope), variables in scoped.items():
        if layer == "device_class":
            _render_variables(lines, f"[device_classes.{_toml_key(scope)}.variables]", variables)
    for (layer, scope), variables in scoped.items():
        if layer == "device_type":
            _render_variables(lines, f"[device_types.{_toml_key(scope)}.variables]", variables)
    for frontend in inventory.frontends:
        lines.extend(["", "[[frontends]]"])
        _render_fields(
            lines,
            [
                ("id", frontend.id),
                ("public_address", frontend.public_address),
                ("internal_address", frontend.internal_address),
                ("index", frontend.index),
            ],
        )
        _render_variables(lines, "[frontends.variables]", variables_of("frontend", frontend.id))
    for customer in inventory.customers:
        lines.extend(["", "[[customers]]"])
        _render_fields(
            lines,
            [(field.name, getattr(customer, field.name)) for field in dataclasses.fields(Customer)],
        )
        _render_variables(lines, "[customers.variables]", variables_of("customer", customer.id))
    for device in inventory.devices:
        lines.extend(["", "[[devices]]"])
        derived = f"{device.device_type}-{device.mac[6:8]}-{device.mac[8:10]}-{device.mac[10:12]}"
        _render_fields(
            lines,
            [
                ("mac", device.mac),
                ("type", device.device_type),
                ("class", device.device_class),
                ("customer", device.customer),
                ("hardware_id", None if device.hardware_id == derived else device.hardware_id),
                ("cpe_id", device.cpe_id),
                ("name", device.name),
            ],
        )
        _render_variables(lines, "[devices.variables]", variables_of("device", device.mac))
    return "\n".join(lines) + "\n"


# --- differences -------------------------------------------------------------------------------

_KIND_ORDER: dict[str, int] = {"frontend": 0, "customer": 1, "device": 2, "variable": 3}
# Dataclass field -> the name a person knows from the file.
_FIELD_NAMES = {"device_type": "type", "device_class": "class"}


def _changed_fields(old: object, new: object) -> tuple[str, ...]:
    return tuple(
        _FIELD_NAMES.get(field.name, field.name)
        for field in dataclasses.fields(old)  # type: ignore[arg-type]
        if getattr(old, field.name) != getattr(new, field.name)
    )


def _diff_kind(
    kind: ChangeKind,
    current: Mapping[str, _T],
    desired: Mapping[str, _T],
    order: Callable[[_T], tuple[Any, ...]],
) -> list[Change]:
    changes: list[Change] = []
    items = {**current, **desired}
    for key in sorted(items, key=lambda k: order(items[k])):
        if key not in desired:
            changes.append(Change("remove", kind, key))
        elif key not in current:
            changes.append(Change("add", kind, key))
        else:
            fields = _changed_fields(current[key], desired[key])
            if fields:
                changes.append(Change("change", kind, key, fields))
    return changes


def diff_inventory(current: Inventory, desired: Inventory) -> list[Change]:
    """What turns ``current`` into ``desired``: Frontends, customers, devices, then variables
    (in layer order); pure."""

    def by_id(item: Frontend | Customer) -> tuple[str]:
        return (item.id,)

    def by_mac(device: Device) -> tuple[str]:
        return (device.mac,)

    def by_layer(variable: Variable) -> tuple[int, str, str]:
        return (_layer_rank(variable.layer), variable.scope, variable.name)

    return [
        *_diff_kind(
            "frontend",
            {f.id: f for f in current.frontends},
            {f.id: f for f in desired.frontends},
            by_id,
        ),
        *_diff_kind(
            "customer",
            {c.id: c for c in current.customers},
            {c.id: c for c in desired.customers},
            by_id,
        ),
        *_diff_kind(
            "device",
            {d.mac: d for d in current.devices},
            {d.mac: d for d in desired.devices},
            by_mac,
        ),
        *_diff_kind(
            "variable",
            {v.key: v for v in current.variables},
            {v.key: v for v in desired.variables},
            by_layer,
        ),
    ]


# --- database ----------------------------------------------------------------------------------

# Column lists are written out in every statement: SQL here reads as SQL, with no assembly.
_SELECT_FRONTENDS = "SELECT id, public_address, internal_address, sbc_index FROM frontends"
_SELECT_CUSTOMERS = """
SELECT id, frontend, name, system_name, country_code, area_code, international_prefix,
       national_prefix, subscriber_number, registration_password, login_password,
       allow_claimed_secrets, allow_anonymous_backup, allow_anonymous_contacts
FROM customers"""
_SELECT_DEVICES = (
    "SELECT mac, device_type, device_class, customer, hardware_id, cpe_id, name FROM devices"
)
_SELECT_VARIABLES = "SELECT layer, scope, name, value, secret FROM variables"


def _frontend_row(row: Mapping[str, Any]) -> Frontend:
    return Frontend(row["id"], row["public_address"], row["internal_address"], row["sbc_index"])


def _customer_row(row: Mapping[str, Any]) -> Customer:
    return Customer(**{field.name: row[field.name] for field in dataclasses.fields(Customer)})


def _device_row(row: Mapping[str, Any]) -> Device:
    return Device(**{field.name: row[field.name] for field in dataclasses.fields(Device)})


def _variable_row(row: Mapping[str, Any]) -> Variable:
    return Variable(row["layer"], row["scope"], row["name"], row["value"], row["secret"])


def _frontend_args(frontend: Frontend) -> tuple[Any, ...]:
    return (frontend.id, frontend.public_address, frontend.internal_address, frontend.index)


def _customer_args(customer: Customer) -> tuple[Any, ...]:
    return tuple(getattr(customer, field.name) for field in dataclasses.fields(Customer))


def _device_args(device: Device) -> tuple[Any, ...]:
    return tuple(getattr(device, field.name) for field in dataclasses.fields(Device))


def _variable_args(variable: Variable) -> tuple[Any, ...]:
    return (variable.layer, variable.scope, variable.name, variable.value, variable.secret)


_UPSERT_FRONTEND = """
INSERT INTO frontends (id, public_address, internal_address, sbc_index)
VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE SET
    public_address = EXCLUDED.public_address,
    internal_address = EXCLUDED.internal_address,
    sbc_index = EXCLUDED.sbc_index"""
_UPSERT_CUSTOMER = """
INSERT INTO customers (
    id, frontend, name, system_name, country_code, area_code, international_prefix,
    national_prefix, subscriber_number, registration_password, login_password,
    allow_claimed_secrets, allow_anonymous_backup, allow_anonymous_contacts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (id) DO UPDATE SET
    frontend = EXCLUDED.frontend,
    name = EXCLUDED.name,
    system_name = EXCLUDED.system_name,
    country_code = EXCLUDED.country_code,
    area_code = EXCLUDED.area_code,
    international_prefix = EXCLUDED.international_prefix,
    national_prefix = EXCLUDED.national_prefix,
    subscriber_number = EXCLUDED.subscriber_number,
    registration_password = EXCLUDED.registration_password,
    login_password = EXCLUDED.login_password,
    allow_claimed_secrets = EXCLUDED.allow_claimed_secrets,
    allow_anonymous_backup = EXCLUDED.allow_anonymous_backup,
    allow_anonymous_contacts = EXCLUDED.allow_anonymous_contacts"""
_UPSERT_DEVICE = """
INSERT INTO devices (mac, device_type, device_class, customer, hardware_id, cpe_id, name)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (mac) DO UPDATE SET
    device_type = EXCLUDED.device_type,
    device_class = EXCLUDED.device_class,
    customer = EXCLUDED.customer,
    hardware_id = EXCLUDED.hardware_id,
    cpe_id = EXCLUDED.cpe_id,
    name = EXCLUDED.name"""
_UPSERT_VARIABLE = """
INSERT INTO variables (layer, scope, name, value, secret)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (layer, scope, name) DO UPDATE SET value = EXCLUDED.value, secret = EXCLUDED.secret"""
# Checked at commit inside apply_inventory, so rows can move in any order (e.g. a replacement
# phone taking over a CPE id, a customer moving to a new Frontend).
_DEFERRABLE = (
    "customers_frontend_fkey, devices_customer_fkey, devices_hardware_id_key, devices_cpe_id_key"
)


async def _lock(connection: asyncpg.Connection) -> None:
    await connection.execute("SELECT pg_advisory_xact_lock($1)", INVENTORY_LOCK_ID)


async def _load(connection: asyncpg.Connection) -> Inventory:
    frontends = await connection.fetch(_SELECT_FRONTENDS)
    customers = await connection.fetch(_SELECT_CUSTOMERS)
    devices = await connection.fetch(_SELECT_DEVICES)
    variables = await connection.fetch(_SELECT_VARIABLES)
    return Inventory(
        frontends=tuple(_frontend_row(row) for row in frontends),
        customers=tuple(_customer_row(row) for row in customers),
        devices=tuple(_device_row(row) for row in devices),
        variables=tuple(_variable_row(row) for row in variables),
    )


async def load_inventory(connection: asyncpg.Connection) -> Inventory:
    """The inventory as stored, from one consistent snapshot."""
    if connection.is_in_transaction():
        return await _load(connection)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        return await _load(connection)


def _integrity_problem(error: asyncpg.IntegrityConstraintViolationError) -> str:
    """One line naming the table and PostgreSQL's reason (its detail names keys, never secrets:
    no secret column is part of a key or constraint)."""
    table = getattr(error, "table_name", None) or "?"
    message = getattr(error, "message", None) or str(error)
    detail = getattr(error, "detail", None)
    text = f"{message} ({detail})" if detail else message
    return f"database: {table}: {printable(text, 400)}"


async def apply_inventory(
    connection: asyncpg.Connection, desired: Inventory, *, dry_run: bool = False
) -> list[Change]:
    """Make the stored inventory equal ``desired`` (what it lacks is removed, customers with
    their contacts and backups); return the changes. For tests, benchmarks and tools that own the
    whole database; operators' files go through :mod:`services.core.inventory_apply` (adds and
    updates only, prunes within a file's scope, archives removed customers, audited).

    One transaction under :data:`INVENTORY_LOCK_ID`, so concurrent appliers serialise and the
    second sees the first's result. Idempotent: applying the same inventory again returns ``[]``
    and changes nothing (no version bump, no NOTIFY). ``dry_run`` computes the changes only.
    Raises InventoryError (and changes nothing) for invalid data or when the database refuses,
    e.g. a row another table still references.
    """
    desired = validate_inventory(desired)
    try:
        async with connection.transaction():
            await _lock(connection)
            current = await _load(connection)
            changes = diff_inventory(current, desired)
            if dry_run or not changes:
                return changes
            await connection.execute(f"SET CONSTRAINTS {_DEFERRABLE} DEFERRED")
            removed = [c.key for c in changes if c.kind == "customer" and c.action == "remove"]
            # The whole-state replace of old: a removed customer goes with its contact history
            # (operators use services.core.inventory_apply, which archives).
            await _purge_customers(connection, removed)
            await _write_changes(connection, changes, current, desired)
            # Check the deferred constraints here rather than at commit, inside this try.
            await connection.execute(f"SET CONSTRAINTS {_DEFERRABLE} IMMEDIATE")
    except asyncpg.IntegrityConstraintViolationError as error:
        raise InventoryError([_integrity_problem(error)]) from None
    return changes


async def _write_changes(
    connection: asyncpg.Connection,
    changes: Sequence[Change],
    current: Inventory,
    desired: Inventory,
) -> None:
    def keys(kind: str, action: str) -> list[str]:
        return [c.key for c in changes if c.kind == kind and c.action == action]

    def upserts(kind: str) -> set[str]:
        return {c.key for c in changes if c.kind == kind and c.action != "remove"}

    removed_variables = set(keys("variable", "remove"))
    if removed_variables:
        await connection.executemany(
            "DELETE FROM variables WHERE layer = $1 AND scope = $2 AND name = $3",
            [(v.layer, v.scope, v.name) for v in current.variables if v.key in removed_variables],
        )
    if removed := keys("device", "remove"):
        await connection.execute("DELETE FROM devices WHERE mac = ANY($1::text[])", removed)
    if removed := keys("customer", "remove"):
        await connection.execute("DELETE FROM customers WHERE id = ANY($1::text[])", removed)
    if removed := keys("frontend", "remove"):
        await connection.execute("DELETE FROM frontends WHERE id = ANY($1::text[])", removed)

    wanted = upserts("frontend")
    if wanted:
        await connection.executemany(
            _UPSERT_FRONTEND, [_frontend_args(f) for f in desired.frontends if f.id in wanted]
        )
    wanted = upserts("customer")
    if wanted:
        await connection.executemany(
            _UPSERT_CUSTOMER, [_customer_args(c) for c in desired.customers if c.id in wanted]
        )
    wanted = upserts("device")
    if wanted:
        await connection.executemany(
            _UPSERT_DEVICE, [_device_args(d) for d in desired.devices if d.mac in wanted]
        )
    wanted = upserts("variable")
    if wanted:
        await connection.executemany(
            _UPSERT_VARIABLE, [_variable_args(v) for v in desired.variables if v.key in wanted]
        )


# --- archived customers ------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedCustomer:
    customer: Customer
    archived_at: Any
    archived_by: str
    owner: str | None
    devices: tuple[Device, ...]
    variables: tuple[Variable, ...]
    contacts_version: int | None


def _archive_record(
    customer: Customer,
    devices: Sequence[Device],
    variables: Sequence[Variable],
    contacts_version: int | None,
) -> str:
    import json

    return json.dumps(
        {
            "customer": dataclasses.asdict(customer),
            "devices": [dataclasses.asdict(device) for device in devices],
            "variables": [dataclasses.asdict(variable) for variable in variables],
            "contacts_version": contacts_version,
        },
        sort_keys=True,
    )


def _archived_row(row: Mapping[str, Any]) -> ArchivedCustomer:
    import json

    record = json.loads(row["record"])
    return ArchivedCustomer(
        customer=Customer(**record["customer"]),
        archived_at=row["archived_at"],
        archived_by=row["archived_by"],
        owner=row["owner"],
        devices=tuple(Device(**item) for item in record["devices"]),
        variables=tuple(Variable(**item) for item in record["variables"]),
        contacts_version=record["contacts_version"],
    )


async def _archive_customers(
    connection: asyncpg.Connection,
    current: Inventory,
    customer_ids: Sequence[str],
    removed_devices: set[str],
    archived_by: str,
) -> None:
    """Keep removed customers restorable: row, removed devices, their variables and the contacts
    version served; called before the customers' rows are deleted (contact_current goes then)."""
    if not customer_ids:
        return
    wanted = set(customer_ids)
    owners = {
        row["id"]: row["owner"]
        for row in await connection.fetch(
            "SELECT id, owner FROM customers WHERE id = ANY($1::text[])", list(wanted)
        )
    }
    versions = {
        row["customer"]: row["version"]
        for row in await connection.fetch(
            "SELECT customer, version FROM contact_current WHERE customer = ANY($1::text[])",
            list(wanted),
        )
    }
    rows: list[tuple[Any, ...]] = []
    for customer in current.customers:
        if customer.id not in wanted:
            continue
        devices = [
            d for d in current.devices if d.customer == customer.id and d.mac in removed_devices
        ]
        macs = {d.mac for d in devices}
        variables = [
            v
            for v in current.variables
            if (v.layer == "customer" and v.scope == customer.id)
            or (v.layer == "device" and v.scope in macs)
        ]
        record = _archive_record(customer, devices, variables, versions.get(customer.id))
        rows.append((customer.id, archived_by, owners.get(customer.id), record))
    await connection.executemany(
        """INSERT INTO customer_archive (customer, archived_by, owner, record)
           VALUES ($1, $2, $3, $4::text::jsonb)
           ON CONFLICT (customer) DO UPDATE SET archived_at = now(),
               archived_by = EXCLUDED.archived_by, owner = EXCLUDED.owner,
               record = EXCLUDED.record""",
        rows,
    )


async def _purge_customers(connection: asyncpg.Connection, customer_ids: Sequence[str]) -> None:
    """Delete what outlives a customer: contact history, config backups, an archive entry."""
    if not customer_ids:
        return
    ids = list(customer_ids)
    await connection.execute("DELETE FROM contact_current WHERE customer = ANY($1::text[])", ids)
    await connection.execute("DELETE FROM contact_versions WHERE customer = ANY($1::text[])", ids)
    await connection.execute("DELETE FROM backup_devices WHERE customer = ANY($1::text[])", ids)
    await connection.execute("DELETE FROM customer_archive WHERE customer = ANY($1::text[])", ids)


async def archived_customers(connection: asyncpg.Connection) -> list[ArchivedCustomer]:
    """Customers removed without purge, by id."""
    rows = await connection.fetch(
        "SELECT customer, archived_at, archived_by, owner, record::text AS record "
        "FROM customer_archive ORDER BY customer"
    )
    return [_archived_row(row) for row in rows]


async def archived_ids(connection: asyncpg.Connection, customer_ids: Iterable[str]) -> set[str]:
    """Which of ``customer_ids`` are archived (case-insensitively: ids differ in more than
    case)."""
    rows = await connection.fetch(
        "SELECT a.customer FROM customer_archive a "
        "WHERE lower(a.customer) = ANY(SELECT lower(x) FROM unnest($1::text[]) x)",
        list(customer_ids),
    )
    return {row["customer"] for row in rows}


def _customer_audit(customer: Customer | None, owner: str | None = None) -> dict[str, Any] | None:
    if customer is None:
        return None
    data = dataclasses.asdict(customer)
    if owner is not None:
        data["owner"] = owner
    return data


async def restore_customer(
    connection: asyncpg.Connection, customer_id: str, *, actor: audit.Actor
) -> ArchivedCustomer:
    """Bring an archived customer back: row, devices, variables, ownership and the contacts
    version its directory served (if still stored). One transaction under the inventory lock;
    InventoryError (nothing changed) if it is not archived, its id is in use again, its Frontend
    is gone, or a device's MAC, hardware id or CPE id belongs to another device now."""
    label = f"customer {printable(customer_id)}"
    try:
        async with connection.transaction():
            await _lock(connection)
            row = await connection.fetchrow(
                "SELECT customer, archived_at, archived_by, owner, record::text AS record "
                "FROM customer_archive WHERE customer = $1 FOR UPDATE",
                customer_id,
            )
            if row is None:
                raise InventoryError([f"{label}: not archived (pbxfront inventory archived)"])
            archived = _archived_row(row)
            customer = archived.customer
            problems: list[str] = []
            if await connection.fetchval(
                "SELECT true FROM customers WHERE lower(id) = lower($1)", customer.id
            ):
                problems.append(f"{label}: id: a customer with this id exists again")
            if not await connection.fetchval(
                "SELECT true FROM frontends WHERE id = $1", customer.frontend
            ):
                problems.append(f"{label}: frontend: no frontend {customer.frontend!r} any more")
            for device in archived.devices:
                holder = await connection.fetchval(
                    "SELECT mac FROM devices WHERE mac = $1 OR hardware_id = $2 "
                    "OR (cpe_id IS NOT NULL AND cpe_id = $3)",
                    device.mac,
                    device.hardware_id,
                    device.cpe_id,
                )
                if holder is not None:
                    problems.append(
                        f"{label}: device {device.mac}: its MAC, hardware id or CPE id belongs "
                        f"to device {holder} now"
                    )
            _raise_if(problems)
            await connection.execute(_UPSERT_CUSTOMER, *_customer_args(customer))
            await connection.execute(
                "UPDATE customers SET owner = $2 WHERE id = $1", customer.id, archived.owner
            )
            if archived.devices:
                await connection.executemany(
                    _UPSERT_DEVICE, [_device_args(d) for d in archived.devices]
                )
            if archived.variables:
                await connection.executemany(
                    _UPSERT_VARIABLE, [_variable_args(v) for v in archived.variables]
                )
            if archived.contacts_version is not None:
                await connection.execute(
                    """INSERT INTO contact_current (customer, version)
                       SELECT customer, version FROM contact_versions
                       WHERE customer = $1 AND version = $2""",
                    customer.id,
                    archived.contacts_version,
                )
            await connection.execute(
                "DELETE FROM customer_archive WHERE customer = $1", customer.id
            )
            await audit.record(
                connection,
                actor=actor,
                action="inventory.restore",
                object_type="customer",
                object_id=customer.id,
                after={
                    **(_customer_audit(customer, archived.owner) or {}),
                    "devices": sorted(d.mac for d in archived.devices),
                    "contacts_version": archived.contacts_version,
                },
            )
    except asyncpg.IntegrityConstraintViolationError as error:
        raise InventoryError([_integrity_problem(error)]) from None
    return archived


async def purge_archived_customer(
    connection: asyncpg.Connection, customer_id: str, *, actor: audit.Actor
) -> bool:
    """Delete an archived customer's contact history and backups for good; False if it is not
    archived."""
    async with connection.transaction():
        await _lock(connection)
        found = await connection.fetchval(
            "SELECT true FROM customer_archive WHERE customer = $1 FOR UPDATE", customer_id
        )
        if not found:
            return False
        await _purge_customers(connection, [customer_id])
        await audit.record(
            connection,
            actor=actor,
            action="inventory.purge",
            object_type="customer",
            object_id=customer_id,
        )
    return True


async def inventory_version(connection: asyncpg.Connection) -> int:
    """A counter bumped once by every transaction that changed the inventory (a cache key)."""
    version: int = await connection.fetchval("SELECT version FROM inventory_state")
    return version


_RESOLVE = """
SELECT DISTINCT ON (name) layer, scope, name, value, secret
FROM variables
WHERE layer = 'global'
   OR (layer = 'frontend' AND scope = (SELECT frontend FROM customers WHERE id = $1))
   OR (layer = 'customer' AND scope = $1)
   OR (layer = 'device_class' AND scope = $2)
   OR (layer = 'device_type' AND scope = $3)
   OR (layer = 'device' AND scope = $4)
ORDER BY name, array_position($5::text[], layer) DESC
"""


async def resolve_variables(
    connection: asyncpg.Connection, device: Device
) -> dict[str, ResolvedVariable]:
    """The device's update variables by name, each from the most specific layer that sets it.

    Layers, later wins: global < frontend (the customer's) < customer < device_class <
    device_type < device. One query.
    """
    try:
        mac = normalize_mac(device.mac)
        device_type = normalize_device_type(device.device_type)
    except IdentityError as error:
        raise InventoryError([f"device {printable(device.mac)}: {error}"]) from None
    rows = await connection.fetch(
        _RESOLVE, device.customer, device.device_class, device_type, mac, list(LAYERS)
    )
    return {
        row["name"]: ResolvedVariable(
            row["name"], row["value"], row["secret"], row["layer"], row["scope"]
        )
        for row in rows
    }


class InventoryRepository:
    """Row-at-a-time access for the admin API and the services.

    Built on an asyncpg pool (each call acquires a connection; connection failures become
    :class:`db.DatabaseUnavailable`) or a connection (calls join its transaction, if any).
    Contract: reads return ``None`` / ``[]`` for what is not there; writes validate first and
    raise :class:`InventoryError` (nothing changed) for invalid data, a missing referenced row,
    or a uniqueness clash; each write is one transaction under :data:`INVENTORY_LOCK_ID`,
    idempotent (writing the stored value again changes nothing) and, when it changes something,
    bumps the version and NOTIFYs ``pbxfront_inventory``. With an ``actor`` every write that
    changes something is recorded in the audit log in its transaction (before -> after, secrets
    redacted). A customer created here is owned by ``api``: no inventory file touches it unless
    it claims it. Deleting a customer archives it (contacts and backups kept, restorable).
    """

    def __init__(
        self,
        database: asyncpg.Pool | asyncpg.Connection,
        *,
        acquire_timeout: float = 2.0,
        actor: audit.Actor | None = None,
    ) -> None:
        self._database = database
        self._acquire_timeout = acquire_timeout
        self._actor = actor

    async def _audit(
        self,
        connection: asyncpg.Connection,
        action: str,
        object_type: str,
        object_id: str,
        before: Any,
        after: Any,
    ) -> None:
        if self._actor is not None:
            await audit.record(
                connection,
                actor=self._actor,
                action=action,
                object_type=object_type,
                object_id=object_id,
                before=before,
                after=after,
            )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._database, asyncpg.Pool):
            async with db.acquire(self._database, self._acquire_timeout) as connection:
                yield connection
        else:
            yield self._database

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as connection:
            try:
                async with connection.transaction():
                    await _lock(connection)
                    yield connection
            except asyncpg.IntegrityConstraintViolationError as error:
                # Pre-checks below give the usual messages; this catches the rest (e.g. a row
                # another table still references).
                raise InventoryError([_integrity_problem(error)]) from None

    # Frontends

    async def list_frontends(self) -> list[Frontend]:
        async with self._connection() as connection:
            rows = await connection.fetch(_SELECT_FRONTENDS + " ORDER BY id")
        return [_frontend_row(row) for row in rows]

    async def get_frontend(self, frontend_id: str) -> Frontend | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_FRONTENDS + " WHERE id = $1", frontend_id)
        return None if row is None else _frontend_row(row)

    async def upsert_frontend(self, frontend: Frontend) -> bool:
        """Create or replace; True if created."""
        label = f"frontend {printable(frontend.id)}"
        normalized = _validated(label, _check_frontend(frontend))
        async with self._writing() as connection:
            problems: list[str] = []
            clash = await connection.fetchval(
                "SELECT id FROM frontends WHERE lower(id) = lower($1) AND id <> $1", normalized.id
            )
            if clash is not None:
                problems.append(f"{label}: id: differs only in case from frontend {clash}")
            holder = await connection.fetchval(
                "SELECT id FROM frontends WHERE sbc_index = $1 AND id <> $2",
                normalized.index,
                normalized.id,
            )
            if holder is not None:
                problems.append(
                    f"{label}: index: {normalized.index} is also the index of frontend {holder}"
                )
            _raise_if(problems)
            row = await connection.fetchrow(
                _SELECT_FRONTENDS + " WHERE id = $1 FOR UPDATE",
                normalized.id,
            )
            if row is not None and _frontend_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_FRONTEND, *_frontend_args(normalized))
            before = None if row is None else dataclasses.asdict(_frontend_row(row))
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "frontend",
                normalized.id,
                before,
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_frontend(self, frontend_id: str) -> bool:
        """Remove a Frontend that serves no customer; False if there was none."""
        async with self._writing() as connection:
            count = await connection.fetchval(
                "SELECT count(*) FROM customers WHERE frontend = $1", frontend_id
            )
            if count:
                raise InventoryError(
                    [
                        f"frontend {printable(frontend_id)}: still serves {count} customer(s); "
                        "move or remove them first"
                    ]
                )
            row = await connection.fetchrow(
                _SELECT_FRONTENDS + " WHERE id = $1 FOR UPDATE", frontend_id
            )
            status = await connection.execute("DELETE FROM frontends WHERE id = $1", frontend_id)
            if row is not None:
                await self._audit(
                    connection,
                    "inventory.remove",
                    "frontend",
                    frontend_id,
                    dataclasses.asdict(_frontend_row(row)),
                    None,
                )
        return bool(status == "DELETE 1")

    # Customers

    async def list_customers(self, frontend: str | None = None) -> list[Customer]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                _SELECT_CUSTOMERS + " WHERE $1::text IS NULL OR frontend = $1 ORDER BY id",
                frontend,
            )
        return [_customer_row(row) for row in rows]

    async def get_customer(self, customer_id: str) -> Customer | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_CUSTOMERS + " WHERE id = $1", customer_id)
        return None if row is None else _customer_row(row)

    async def upsert_customer(self, customer: Customer) -> bool:
        """Create or replace; True if created. The Frontend must exist."""
        label = f"customer {printable(customer.id)}"
        normalized = _validated(label, _check_customer(customer))
        async with self._writing() as connection:
            problems: list[str] = []
            if not await connection.fetchval(
                "SELECT true FROM frontends WHERE id = $1", normalized.frontend
            ):
                problems.append(f"{label}: frontend: no frontend {normalized.frontend!r}")
            clash = await connection.fetchval(
                "SELECT id FROM customers WHERE lower(id) = lower($1) AND id <> $1", normalized.id
            )
            if clash is not None:
                problems.append(f"{label}: id: differs only in case from customer {clash}")
            row = await connection.fetchrow(
                _SELECT_CUSTOMERS + " WHERE id = $1 FOR UPDATE",
                normalized.id,
            )
            if row is None and await archived_ids(connection, [normalized.id]):
                problems.append(
                    f"{label}: id: archived; restore it (pbxfront inventory restore) or purge it"
                )
            _raise_if(problems)
            if row is not None and _customer_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_CUSTOMER, *_customer_args(normalized))
            if row is None:
                await connection.execute(
                    "UPDATE customers SET owner = 'api' WHERE id = $1", normalized.id
                )
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "customer",
                normalized.id,
                None if row is None else dataclasses.asdict(_customer_row(row)),
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_customer(self, customer_id: str, *, purge: bool = False) -> bool:
        """Remove a customer without devices; False if none. It is archived with its variables
        (contact history and backups stay, ``restore_customer`` brings it back) unless
        ``purge``."""
        async with self._writing() as connection:
            count = await connection.fetchval(
                "SELECT count(*) FROM devices WHERE customer = $1", customer_id
            )
            if count:
                raise InventoryError(
                    [
                        f"customer {printable(customer_id)}: still has {count} device(s); "
                        "move or remove them first"
                    ]
                )
            row = await connection.fetchrow(
                _SELECT_CUSTOMERS + " WHERE id = $1 FOR UPDATE", customer_id
            )
            if row is None:
                return False
            if purge:
                await _purge_customers(connection, [customer_id])
            else:
                current = Inventory(
                    customers=(_customer_row(row),),
                    variables=tuple(
                        _variable_row(v)
                        for v in await connection.fetch(
                            _SELECT_VARIABLES + " WHERE layer = 'customer' AND scope = $1",
                            customer_id,
                        )
                    ),
                )
                archived_by = self._actor.name if self._actor is not None else "api"
                await _archive_customers(connection, current, [customer_id], set(), archived_by)
            status = await connection.execute("DELETE FROM customers WHERE id = $1", customer_id)
            await self._audit(
                connection,
                "inventory.purge" if purge else "inventory.archive",
                "customer",
                customer_id,
                dataclasses.asdict(_customer_row(row)),
                None,
            )
        return bool(status == "DELETE 1")

    # Devices

    async def list_devices(
        self, customer: str | None = None, *, limit: int = 1000, offset: int = 0
    ) -> list[Device]:
        """Devices by MAC, optionally of one customer; ``limit`` 1..10000."""
        if not 1 <= limit <= _MAX_LIMIT or offset < 0:
            raise InventoryError([f"limit: must be 1..{_MAX_LIMIT}; offset: must be >= 0"])
        async with self._connection() as connection:
            rows = await connection.fetch(
                _SELECT_DEVICES + " WHERE $1::text IS NULL OR customer = $1 "
                "ORDER BY mac LIMIT $2 OFFSET $3",
                customer,
                limit,
                offset,
            )
        return [_device_row(row) for row in rows]

    async def get_device(self, mac: str) -> Device | None:
        """By MAC in any notation; InventoryError if ``mac`` is not a MAC."""
        normalized = _normalized("mac", _mac, mac)
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_DEVICES + " WHERE mac = $1", normalized)
        return None if row is None else _device_row(row)

    async def device_by_hardware_id(self, hardware_id: str) -> Device | None:
        """By hardware id (``IP232-01-02-03``, any case, CN fix-ups applied)."""
        try:
            normalized = normalize_hardware_id(hardware_id)
        except IdentityError as error:
            raise InventoryError([f"hardware_id: {error}"]) from None
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_DEVICES + " WHERE hardware_id = $1", normalized)
        return None if row is None else _device_row(row)

    async def upsert_device(self, device: Device) -> bool:
        """Create or replace by MAC; True if created. The customer must exist; hardware id and
        CPE id must not belong to another device."""
        label = f"device {printable(device.mac)}"
        normalized = _validated(label, _check_device(device))
        label = f"device {normalized.mac}"
        async with self._writing() as connection:
            problems: list[str] = []
            if not await connection.fetchval(
                "SELECT true FROM customers WHERE id = $1", normalized.customer
            ):
                problems.append(f"{label}: customer: no customer {normalized.customer!r}")
            holder = await connection.fetchval(
                "SELECT mac FROM devices WHERE hardware_id = $1 AND mac <> $2",
                normalized.hardware_id,
                normalized.mac,
            )
            if holder is not None:
                problems.append(
                    f"{label}: hardware_id: {normalized.hardware_id} belongs to device {holder}"
                )
            if normalized.cpe_id is not None:
                holder = await connection.fetchval(
                    "SELECT mac FROM devices WHERE cpe_id = $1 AND mac <> $2",
                    normalized.cpe_id,
                    normalized.mac,
                )
                if holder is not None:
                    problems.append(
                        f"{label}: cpe_id: {normalized.cpe_id} belongs to device {holder}"
                    )
            _raise_if(problems)
            row = await connection.fetchrow(
                _SELECT_DEVICES + " WHERE mac = $1 FOR UPDATE",
                normalized.mac,
            )
            if row is not None and _device_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_DEVICE, *_device_args(normalized))
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "device",
                normalized.mac,
                None if row is None else dataclasses.asdict(_device_row(row)),
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_device(self, mac: str) -> bool:
        """Remove a device and its variables; False if there was none."""
        normalized = _normalized("mac", _mac, mac)
        async with self._writing() as connection:
            row = await connection.fetchrow(
                _SELECT_DEVICES + " WHERE mac = $1 FOR UPDATE", normalized
            )
            status = await connection.execute("DELETE FROM devices WHERE mac = $1", normalized)
            if row is not None:
                await self._audit(
                    connection,
                    "inventory.remove",
                    "device",
                    normalized,
                    dataclasses.asdict(_device_row(row)),
                    None,
                )
        return bool(status == "DELETE 1")

    # Variables

    async def list_variables(
        self, layer: str | None = None, scope: str | None = None
    ) -> list[Variable]:
        """Variables in layer order, optionally of one layer and/or scope (normalised by layer)."""
        if layer is not None:
            layer = _normalized("layer", _check_layer, layer)
            if scope is not None:
                checked_layer = layer
                scope = _normalized("scope", lambda v: _normalize_scope(checked_layer, v), scope)
        async with self._connection() as connection:
            rows = await connection.fetch(
                _SELECT_VARIABLES + " "
                "WHERE ($1::text IS NULL OR layer = $1) AND ($2::text IS NULL OR scope = $2) "
                "ORDER BY array_position($3::text[], layer), scope, name",
                layer,
                scope,
                list(LAYERS),
            )
        return [_variable_row(row) for row in rows]

    async def set_variable(
        self, layer: str, scope: str, name: str, value: str, secret: bool = False
    ) -> bool:
        """Create or replace one variable; True if created. Its Frontend/customer/device must
        exist (class and type layers stand alone)."""
        variable = Variable(layer, scope, name, value, secret)
        normalized = _validated(f"variable {printable(variable.key)}", _check_variable(variable))
        label = f"variable {normalized.key}"
        owner = {
            "frontend": "SELECT true FROM frontends WHERE id = $1",
            "customer": "SELECT true FROM customers WHERE id = $1",
            "device": "SELECT true FROM devices WHERE mac = $1",
        }.get(normalized.layer)
        async with self._writing() as connection:
            if owner is not None and not await connection.fetchval(owner, normalized.scope):
                raise InventoryError(
                    [f"{label}: scope: no {normalized.layer} {normalized.scope!r}"]
                )
            row = await connection.fetchrow(
                _SELECT_VARIABLES + " WHERE layer = $1 AND scope = $2 AND name = $3 FOR UPDATE",
                normalized.layer,
                normalized.scope,
                normalized.name,
            )
            if row is not None and _variable_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_VARIABLE, *_variable_args(normalized))
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "variable",
                normalized.key,
                None if row is None else dataclasses.asdict(_variable_row(row)),
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_variable(self, layer: str, scope: str, name: str) -> bool:
        """Remove one variable; False if there was none."""
        layer = _normalized("layer", _check_layer, layer)
        scope = _normalized("scope", lambda v: _normalize_scope(layer, v), scope)
        async with self._writing() as connection:
            row = await connection.fetchrow(
                _SELECT_VARIABLES + " WHERE layer = $1 AND scope = $2 AND name = $3 FOR UPDATE",
                layer,
                scope,
                name,
            )
            status = await connection.execute(
                "DELETE FROM variables WHERE layer = $1 AND scope = $2 AND name = $3",
                layer,
                scope,
                name,
            )
            if row is not None:
                variable = _variable_row(row)
                await self._audit(
                    connection,
                    "inventory.remove",
                    "variable",
                    variable.key,
                    dataclasses.asdict(variable),
                    None,
                )
        return bool(status == "DELETE 1")


def _validated(label: str, checked: tuple[_T, list[tuple[str, str]]]) -> _T:
    value, problems = checked
    _raise_if([_problem("", label, field, why) for field, why in problems])
    return value


def _normalized(field: str, check: Callable[[object], _T], value: object) -> _T:
    try:
        return check(value)
    except _Invalid as error:
        raise InventoryError([f"{field}: {error}"]) from None


def _raise_if(problems: Sequence[str]) -> None:
    if problems:
        raise InventoryError(problems)
