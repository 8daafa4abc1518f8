"""Differences between two inventories, as changes that name fields, never secret values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from services.core.inventory.model import (
    _T,
    Change,
    ChangeKind,
    Customer,
    Device,
    Frontend,
    Inventory,
    Variable,
    _layer_rank,
)

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
