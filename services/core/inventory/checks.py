"""Cross checks of a whole inventory (references, uniqueness), shared by files and objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from services.core.identity import (
    printable,
)
from services.core.inventory.fields import (
    _check_customer,
    _check_device,
    _check_frontend,
    _check_variable,
    _Invalid,
    _mac,
    _problem,
)
from services.core.inventory.model import (
    Customer,
    Device,
    Frontend,
    Inventory,
    InventoryError,
    Variable,
)

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
