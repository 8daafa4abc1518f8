"""Layered update variables: the one place they are resolved.

A variable is set on a layer for a scope (``customer`` / ``Kuenkel00001``); for a device the
layers apply in order, later wins::

    global < frontend (the customer's) < customer < device_class < device_type < device

Two paths give the same answer (a test holds them to it): :class:`LayeredVariables` over an
inventory in memory (the update service's snapshot, plans, the CA, backups' policy) and
:func:`resolve_variables`, one query, for a single device straight from PostgreSQL (the admin
API's explain). A Frontend or a customer resolves over the layers above it only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import asyncpg

from services.core.identity import (
    IdentityError,
    normalize_device_type,
    normalize_mac,
    printable,
)
from services.core.inventory.model import (
    LAYERS,
    Customer,
    Device,
    InventoryError,
    ResolvedVariable,
    Variable,
)


def frontend_scopes(frontend_id: str) -> dict[str, str]:
    return {"global": "", "frontend": frontend_id}


def customer_scopes(customer_id: str, frontend_id: str) -> dict[str, str]:
    return {**frontend_scopes(frontend_id), "customer": customer_id}


def device_scopes(device: Device, customer: Customer) -> dict[str, str]:
    """The scope of every layer for ``device`` of ``customer``."""
    return {
        **customer_scopes(customer.id, customer.frontend),
        "device_class": device.device_class,
        "device_type": device.device_type,
        "device": device.mac,
    }


class LayeredVariables:
    """An inventory's variables indexed by (layer, scope), resolved in memory."""

    def __init__(self, variables: Iterable[Variable]) -> None:
        self._scoped: dict[tuple[str, str], list[Variable]] = {}
        for variable in variables:
            self._scoped.setdefault((variable.layer, variable.scope), []).append(variable)

    def resolve(self, scopes: Mapping[str, str]) -> dict[str, ResolvedVariable]:
        """By name, each from the most specific of the layers in ``scopes``."""
        resolved: dict[str, ResolvedVariable] = {}
        for layer in LAYERS:
            if layer not in scopes:
                continue
            for variable in self._scoped.get((layer, scopes[layer]), ()):
                resolved[variable.name] = ResolvedVariable(
                    variable.name, variable.value, variable.secret, variable.layer, variable.scope
                )
        return resolved

    def values(self, scopes: Mapping[str, str]) -> dict[str, str]:
        return {name: item.value for name, item in self.resolve(scopes).items()}

    def for_device(self, device: Device, customer: Customer) -> dict[str, ResolvedVariable]:
        return self.resolve(device_scopes(device, customer))


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
