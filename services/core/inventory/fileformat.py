"""The inventory file format (TOML): read with every problem named, written back canonically."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from services.core.identity import (
    printable,
)
from services.core.inventory.checks import _Checked, _Claims, validate_inventory
from services.core.inventory.fields import (
    _check_variable,
    _describe,
    _frontend_id,
    _Invalid,
    _normalize_scope,
    _problem,
    _safe_id,
)
from services.core.inventory.model import (
    _BARE_KEY,
    Customer,
    Device,
    Frontend,
    Inventory,
    InventoryError,
    Scope,
    Variable,
)

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
