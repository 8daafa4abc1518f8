"""Field rules, one set for inventory files and the API: each value checked and normalised."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence

from services.core.identity import (
    IdentityError,
    normalize_device_type,
    normalize_hardware_id,
    normalize_mac,
    parse_hardware_id,
    printable,
)
from services.core.inventory.model import (
    _CONTROL,
    _COUNTRY_CODE,
    _DOMAIN,
    _FRONTEND_ID,
    _MAX_TEXT,
    _MAX_VALUE,
    _SAFE_ID,
    _T,
    _VARIABLE_NAME,
    DEVICE_CLASSES,
    LAYERS,
    Customer,
    Device,
    Frontend,
    InventoryError,
    Variable,
)

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
