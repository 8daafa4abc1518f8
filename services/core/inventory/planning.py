"""Planning an inventory apply (pure): the files merged, checked against what is stored and who
owns it, the prune scoped, the changes and ownership claims in order.
:mod:`services.core.inventory.apply` reads the files and writes the plan; its docstring says what
an apply may change and remove."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.core.identity import printable
from services.core.inventory.checks import validate_inventory
from services.core.inventory.diff import diff_inventory
from services.core.inventory.model import (
    Change,
    Customer,
    Device,
    Frontend,
    Inventory,
    InventoryError,
    Scope,
    Variable,
)

_SHARED_LAYERS = ("global", "device_class", "device_type")


@dataclass(frozen=True)
class InventorySource:
    """One inventory file: the owner name it writes as, its content and its ``[scope]``."""

    name: str
    inventory: Inventory
    scope: Scope | None = None


@dataclass(frozen=True)
class Sources:
    """What one apply applies: a file, or a folder's files (``prefix``: what the folder owns)."""

    sources: tuple[InventorySource, ...]
    prefix: str | None = None


@dataclass(frozen=True)
class InventoryPlan:
    """What an apply does (or did): the changes in order, ownership claims, the customers it
    archives or purges, and the prune's share of the stored customers and devices."""

    changes: tuple[Change, ...]
    claims: Mapping[str, str]
    archived: tuple[str, ...]
    purged: tuple[str, ...]
    stored: int
    removing: int
    max_prune_share: float

    @property
    def share(self) -> float:
        return self.removing / self.stored if self.stored else 0.0

    @property
    def too_large(self) -> bool:
        return self.removing > 0 and self.share > self.max_prune_share

    @property
    def removals(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.action == "remove")

    def counts(self) -> dict[str, int]:
        counts = {"add": 0, "change": 0, "remove": 0}
        for change in self.changes:
            counts[change.action] += 1
        return counts

    def summary(self) -> str:
        """``2 to add, 1 to change, 3 to remove (customers 1, devices 2)``."""
        counts = self.counts()
        text = f"{counts['add']} to add, {counts['change']} to change, {counts['remove']} to remove"
        kinds: dict[str, int] = {}
        for change in self.removals:
            kinds[change.kind] = kinds.get(change.kind, 0) + 1
        if kinds:
            text += " (" + ", ".join(f"{kind}s {count}" for kind, count in kinds.items()) + ")"
        return text

    def lines(self) -> list[str]:
        """One line per change; ownership claims and archiving spelled out."""
        lines: list[str] = []
        for change in self.changes:
            line = str(change)
            if change.kind == "customer" and change.key in self.claims:
                line += f" [owner -> {printable(self.claims[change.key])}]"
            if change.kind == "customer" and change.action == "remove":
                line += " [purged]" if change.key in self.purged else " [archived]"
            lines.append(line)
        return lines


def _merge_sources(
    sources: Sequence[InventorySource],
) -> tuple[Inventory, dict[str, str], list[str]]:
    """The union of the files, who names each customer, and cross-file problems."""
    problems: list[str] = []
    frontends: dict[str, tuple[str, Frontend]] = {}
    customers: dict[str, tuple[str, Customer]] = {}
    devices: dict[str, tuple[str, Device]] = {}
    variables: dict[str, tuple[str, Variable]] = {}
    for source in sources:
        for frontend in source.inventory.frontends:
            first = frontends.get(frontend.id)
            if first is not None and first[1] != frontend:
                problems.append(f"{source.name}: frontend {frontend.id}: differs from {first[0]}")
            frontends.setdefault(frontend.id, (source.name, frontend))
        for customer in source.inventory.customers:
            first_customer = customers.get(customer.id.lower())
            if first_customer is not None:
                problems.append(
                    f"{source.name}: customer {customer.id}: also in {first_customer[0]} "
                    "(a customer belongs to one file)"
                )
                continue
            customers[customer.id.lower()] = (source.name, customer)
        for device in source.inventory.devices:
            first_device = devices.get(device.mac)
            if first_device is not None:
                problems.append(f"{source.name}: device {device.mac}: also in {first_device[0]}")
                continue
            devices[device.mac] = (source.name, device)
        for variable in source.inventory.variables:
            first_variable = variables.get(variable.key)
            if first_variable is not None and first_variable[1] != variable:
                problems.append(
                    f"{source.name}: variable {variable.key}: differs from {first_variable[0]}"
                )
            variables.setdefault(variable.key, (source.name, variable))
    union = Inventory(
        frontends=tuple(item for _, item in frontends.values()),
        customers=tuple(item for _, item in customers.values()),
        devices=tuple(item for _, item in devices.values()),
        variables=tuple(item for _, item in variables.values()),
    )
    naming = {item.id: name for name, item in customers.values()}
    return union, naming, problems


def _shared_scopes(sources: Iterable[InventorySource]) -> tuple[bool, set[tuple[str, str]]]:
    """(all shared layers, the (layer, scope) pairs of shared layers the files set)."""
    everything = False
    pairs: set[tuple[str, str]] = set()
    for source in sources:
        if source.scope is not None and source.scope.shared:
            everything = True
        for variable in source.inventory.variables:
            if variable.layer in _SHARED_LAYERS:
                pairs.add((variable.layer, variable.scope))
    return everything, pairs


@dataclass(frozen=True)
class _Planning:
    """What one plan checks against: the files, their union, who names each customer, and the
    stored inventory by key with its owners."""

    sources: Sources
    names: frozenset[str]
    union: Inventory
    naming: Mapping[str, str]
    owners: Mapping[str, str | None]
    current_customers: Mapping[str, Customer]
    current_devices: Mapping[str, Device]

    def ours(self, owner: str | None) -> bool:
        """An owner these files may change: none (unowned), one of them, or their folder."""
        if owner is None or owner in self.names:
            return True
        return self.sources.prefix is not None and owner.startswith(self.sources.prefix)


@dataclass
class _Desired:
    """The inventory an apply leads to, by key (stored items first, then the files' new ones)."""

    frontends: dict[str, Frontend]
    customers: dict[str, Customer]
    devices: dict[str, Device]
    variables: dict[str, Variable]

    def inventory(self) -> Inventory:
        return Inventory(
            frontends=tuple(self.frontends.values()),
            customers=tuple(self.customers.values()),
            devices=tuple(self.devices.values()),
            variables=tuple(self.variables.values()),
        )


@dataclass(frozen=True)
class _PruneScope:
    """What a prune may remove: these customers (their devices and variables), these Frontends,
    and the shared layers the files set (all of them with ``shared``)."""

    customers: set[str]
    frontends: set[str]
    every_shared: bool
    shared_pairs: set[tuple[str, str]]


def plan(
    current: Inventory,
    owners: Mapping[str, str | None],
    archived: set[str],
    sources: Sources,
    *,
    prune: bool,
    purge: bool,
    claim: bool,
    max_prune_share: float,
) -> tuple[InventoryPlan, Inventory]:
    """The plan and the inventory it leads to; pure. InventoryError lists every problem."""
    union, naming, problems = _merge_sources(sources.sources)
    planning = _Planning(
        sources=sources,
        names=frozenset(source.name for source in sources.sources),
        union=union,
        naming=naming,
        owners=owners,
        current_customers={c.id: c for c in current.customers},
        current_devices={d.mac: d for d in current.devices},
    )
    problems.extend(_customer_problems(planning, current, archived, claim=claim))
    problems.extend(_device_problems(planning, claim=claim))
    desired = _Desired(
        frontends={f.id: f for f in current.frontends} | {f.id: f for f in union.frontends},
        customers=dict(planning.current_customers) | {c.id: c for c in union.customers},
        devices=dict(planning.current_devices) | {d.mac: d for d in union.devices},
        variables={v.key: v for v in current.variables} | {v.key: v for v in union.variables},
    )
    if prune:
        _prune(desired, planning, _prune_scope(planning, problems))
    if problems:
        raise InventoryError(problems)
    inventory = validate_inventory(desired.inventory())
    changes, claims = _changes_and_claims(current, inventory, naming, owners)
    removed_customers = tuple(
        c.key for c in changes if c.kind == "customer" and c.action == "remove"
    )
    removing = sum(1 for c in changes if c.action == "remove" and c.kind in ("customer", "device"))
    result = InventoryPlan(
        changes=tuple(changes),
        claims=claims,
        archived=() if purge else removed_customers,
        purged=removed_customers if purge else (),
        stored=len(current.customers) + len(current.devices),
        removing=removing,
        max_prune_share=max_prune_share,
    )
    return result, inventory


def _customer_problems(
    planning: _Planning, current: Inventory, archived: set[str], *, claim: bool
) -> list[str]:
    """The files' customers that are archived, owned by another source, or name no Frontend."""
    problems: list[str] = []
    archived_lower = {customer_id.lower() for customer_id in archived}
    frontend_ids = {f.id for f in current.frontends} | {f.id for f in planning.union.frontends}
    for customer in planning.union.customers:
        where = planning.naming[customer.id]
        if customer.id.lower() in archived_lower:
            problems.append(
                f"{where}: customer {customer.id}: archived; restore it first "
                f"(pbxfront inventory restore {customer.id}) or purge it"
            )
        owner = planning.owners.get(customer.id)
        if customer.id in planning.current_customers and not planning.ours(owner) and not claim:
            problems.append(
                f"{where}: customer {customer.id}: owned by {printable(str(owner))}; this file "
                "may not change it (--claim takes it over)"
            )
        if customer.frontend not in frontend_ids:
            problems.append(
                f"{where}: customer {customer.id}: frontend: no frontend "
                f"{customer.frontend!r} in the files or the database"
            )
    return problems


def _device_problems(planning: _Planning, *, claim: bool) -> list[str]:
    """The files' devices stored under a customer they do not name, which another source owns."""
    problems: list[str] = []
    for device in planning.union.devices:
        stored = planning.current_devices.get(device.mac)
        if stored is None or stored.customer in planning.naming:
            continue
        owner = planning.owners.get(stored.customer)
        if not planning.ours(owner) and not claim:
            problems.append(
                f"device {device.mac}: belongs to customer {stored.customer}, owned by "
                f"{printable(str(owner))}; this file may not move it (--claim takes it over)"
            )
    return problems


def _prune_scope(planning: _Planning, problems: list[str]) -> _PruneScope:
    """The customers the files name or own and their ``[scope]`` lists (a scope customer another
    source owns is a problem), the Frontends they name or list, their shared layers."""
    owners = planning.owners
    customers = set(planning.naming)
    customers |= {cid for cid, owner in owners.items() if owner and planning.ours(owner)}
    frontends = {f.id for f in planning.union.frontends}
    for source in planning.sources.sources:
        if source.scope is None:
            continue
        frontends |= set(source.scope.frontends)
        for customer_id in source.scope.customers:
            if customer_id in planning.current_customers and not planning.ours(
                owners.get(customer_id)
            ):
                problems.append(
                    f"{source.name}: scope: customer {customer_id}: owned by "
                    f"{printable(str(owners.get(customer_id)))}; not in this file's scope"
                )
                continue
            customers.add(customer_id)
    every_shared, shared_pairs = _shared_scopes(planning.sources.sources)
    return _PruneScope(customers, frontends, every_shared, shared_pairs)


def _prune(desired: _Desired, planning: _Planning, scope: _PruneScope) -> None:
    """Remove from ``desired`` what is in the scope and in none of the files."""
    union = planning.union
    union_customers = {c.id for c in union.customers}
    union_devices = {d.mac for d in union.devices}
    union_variables = {v.key for v in union.variables}
    union_frontends = {f.id for f in union.frontends}
    for customer_id in list(desired.customers):
        if customer_id in scope.customers and customer_id not in union_customers:
            del desired.customers[customer_id]
    removed_devices: set[str] = set()
    for mac in list(desired.devices):
        stored = planning.current_devices.get(mac)
        if stored is not None and stored.customer in scope.customers and mac not in union_devices:
            del desired.devices[mac]
            removed_devices.add(mac)
    for frontend_id in list(desired.frontends):
        if frontend_id in scope.frontends and frontend_id not in union_frontends:
            del desired.frontends[frontend_id]
    for key, variable in list(desired.variables.items()):
        if key not in union_variables and _variable_in_scope(
            variable, planning.current_devices, removed_devices, scope
        ):
            del desired.variables[key]


def _variable_in_scope(
    variable: Variable,
    current_devices: Mapping[str, Device],
    removed_devices: set[str],
    scope: _PruneScope,
) -> bool:
    layer, target = variable.layer, variable.scope
    stored_device = current_devices.get(target) if layer == "device" else None
    return (
        (layer == "customer" and target in scope.customers)
        or (
            layer == "device"
            and (
                target in removed_devices
                or (stored_device is not None and stored_device.customer in scope.customers)
            )
        )
        or (layer == "frontend" and target in scope.frontends)
        or (
            layer in _SHARED_LAYERS
            and (scope.every_shared or (layer, target) in scope.shared_pairs)
        )
    )


def _changes_and_claims(
    current: Inventory,
    desired: Inventory,
    naming: Mapping[str, str],
    owners: Mapping[str, str | None],
) -> tuple[list[Change], dict[str, str]]:
    """The changes in order, and the customers whose owner becomes the file naming them; a
    claim alone is a customer change of ``owner`` (customers stay in id order)."""
    changes = diff_inventory(current, desired)
    claims = {
        customer_id: name for customer_id, name in naming.items() if owners.get(customer_id) != name
    }
    changed = {c.key for c in changes if c.kind == "customer"}
    claim_only = [
        Change("change", "customer", customer_id, ("owner",))
        for customer_id in claims
        if customer_id not in changed
    ]
    if claim_only:
        customer_changes = sorted(
            [c for c in changes if c.kind == "customer"] + claim_only, key=lambda c: c.key
        )
        changes = (
            [c for c in changes if c.kind == "frontend"]
            + customer_changes
            + [c for c in changes if c.kind not in ("frontend", "customer")]
        )
    return changes, claims
