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

The package, bottom up (each module imports only those above it): ``model`` (the objects),
``fields`` (one rule per field), ``checks`` (a whole inventory), ``fileformat`` (TOML in and
out), ``diff``, ``variables`` (the one place layered variables are resolved), ``rows`` (tables
and loading), ``archive`` (archived customers), ``store`` (applying an inventory), ``planning``
(what an apply of operators' files and folders does: scopes, ownership, prunes; pure), ``apply``
(reading those files, writing the plan), ``repository`` (row at a time), ``cli``.
The names below are the package's public face.
"""

from __future__ import annotations

from services.core.inventory.archive import (
    ArchivedCustomer,
    archived_customers,
    archived_ids,
    purge_archived_customer,
    restore_customer,
)
from services.core.inventory.checks import validate_inventory
from services.core.inventory.diff import diff_inventory
from services.core.inventory.fileformat import (
    parse_inventory,
    parse_inventory_scoped,
    read_inventory_file,
    render_inventory,
)
from services.core.inventory.model import (
    DEVICE_CLASSES,
    INVENTORY_LOCK_ID,
    LAYERS,
    NOTIFY_CHANNEL,
    Change,
    ChangeAction,
    ChangeKind,
    Customer,
    Device,
    Frontend,
    Inventory,
    InventoryError,
    ResolvedVariable,
    Scope,
    Variable,
)
from services.core.inventory.repository import InventoryRepository
from services.core.inventory.rows import load_inventory
from services.core.inventory.store import apply_inventory, inventory_version
from services.core.inventory.variables import resolve_variables

__all__ = [
    "DEVICE_CLASSES",
    "INVENTORY_LOCK_ID",
    "LAYERS",
    "NOTIFY_CHANNEL",
    "ArchivedCustomer",
    "Change",
    "ChangeAction",
    "ChangeKind",
    "Customer",
    "Device",
    "Frontend",
    "Inventory",
    "InventoryError",
    "InventoryRepository",
    "ResolvedVariable",
    "Scope",
    "Variable",
    "apply_inventory",
    "archived_customers",
    "archived_ids",
    "diff_inventory",
    "inventory_version",
    "load_inventory",
    "parse_inventory",
    "parse_inventory_scoped",
    "purge_archived_customer",
    "read_inventory_file",
    "render_inventory",
    "resolve_variables",
    "restore_customer",
    "validate_inventory",
]
