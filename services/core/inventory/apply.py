"""Applying inventory files without surprises (``pbxfront inventory apply FILE|DIR``).

An apply **adds and updates**; it removes only with ``prune``, and then only inside the files'
*scope*:

- the customers a file names, the customers it owns (ownership is recorded per customer in
  ``customers.owner``: ``file:<name>`` for a file, ``file:<folder>/<name>`` for a file of a folder,
  ``api`` for one created through the admin API) and the customers of its ``[scope]`` table; their
  devices and their customer and device variables;
- the Frontends it names or lists in ``[scope] frontends``;
- the global, device-class and device-type variables it sets (by layer and scope), or all of them
  with ``[scope] shared = true``.

A file never changes or removes a customer another source owns (``claim`` takes a customer over
from another owner; an unowned customer, one from before ownership existed, is claimed by the
first file that names it). A folder applies all its ``*.toml`` files at once (one per customer,
like the seed's ``set-<customer-id>.txt``); the folder owns what any of its files owned, so a file
taken out of the folder is pruned with the folder. A removed customer is archived
(``inventory.restore_customer``) with its contact history and backups unless ``purge``. A prune
over ``max_prune_share`` of the stored customers and devices is refused without ``force``.

Everything happens in one transaction under the inventory lock, so two appliers serialise and the
second plans against the first's result; ``expected`` makes an apply refuse when the plan changed
since it was shown (the confirmation on a terminal). Every change is recorded in the audit log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from services.core import audit
from services.core.identity import printable
from services.core.inventory.archive import _archive_customers, _purge_customers, archived_ids
from services.core.inventory.checks import validate_inventory
from services.core.inventory.diff import diff_inventory
from services.core.inventory.fileformat import parse_inventory_scoped
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
from services.core.inventory.rows import _DEFERRABLE, _integrity_problem, _load, _lock
from services.core.inventory.store import _write_changes

API_OWNER = "api"
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


def _read_text(path: Path) -> str:
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InventoryError([f"{source}: cannot read: {error.strerror}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InventoryError([f"{source}: not UTF-8 (byte {error.start})"]) from None


def read_sources(path: Path) -> Sources:
    """Blocking: read a file or a folder of ``*.toml`` files; InventoryError lists every
    problem of every file (nothing is applied then)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".toml" and p.is_file())
        if not files:
            raise InventoryError([f"{path}: no *.toml inventory files in this folder"])
        folder = path.resolve().name or "inventory"
        prefix = f"file:{folder}/"
        named = [(f"{prefix}{file.name}", file) for file in files]
    else:
        prefix = None
        named = [(f"file:{path.name}", path)]
    problems: list[str] = []
    sources: list[InventorySource] = []
    for name, file in named:
        try:
            inventory, scope = parse_inventory_scoped(_read_text(file), str(file), references=False)
        except InventoryError as error:
            problems.extend(error.problems)
            continue
        sources.append(InventorySource(name, inventory, scope))
    if problems:
        raise InventoryError(problems)
    return Sources(tuple(sources), prefix)


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


async def _owners(connection: asyncpg.Connection) -> dict[str, str | None]:
    rows = await connection.fetch("SELECT id, owner FROM customers")
    return {row["id"]: row["owner"] for row in rows}


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


def _by_key(inventory: Inventory) -> dict[tuple[str, str], Any]:
    items: dict[tuple[str, str], Any] = {}
    items.update({("frontend", f.id): f for f in inventory.frontends})
    items.update({("customer", c.id): c for c in inventory.customers})
    items.update({("device", d.mac): d for d in inventory.devices})
    items.update({("variable", v.key): v for v in inventory.variables})
    return items


async def apply_sources(
    connection: asyncpg.Connection,
    sources: Sources,
    *,
    actor: audit.Actor,
    prune: bool = False,
    purge: bool = False,
    claim: bool = False,
    force: bool = False,
    max_prune_share: float = 0.2,
    dry_run: bool = False,
    expected: Sequence[Change] | None = None,
) -> InventoryPlan:
    """Plan and (unless ``dry_run``) apply ``sources``; the plan. See the module docstring.

    InventoryError (nothing changed): invalid or conflicting files, a customer another source
    owns, an archived id, a prune over ``max_prune_share`` without ``force``, a plan that differs
    from ``expected``, or a database refusal.
    """
    if purge and not prune:
        raise InventoryError(["--purge: only together with --prune (it says what removal does)"])
    try:
        async with connection.transaction():
            await _lock(connection)
            current = await _load(connection)
            owners = await _owners(connection)
            named = [c.id for source in sources.sources for c in source.inventory.customers]
            archived = await archived_ids(connection, named)
            result, desired = plan(
                current,
                owners,
                archived,
                sources,
                prune=prune,
                purge=purge,
                claim=claim,
                max_prune_share=max_prune_share,
            )
            if dry_run:
                return result
            _check_applicable(result, expected, force=force)
            if result.changes:
                await _write_plan(connection, result, current, desired, actor)
                await _audit_plan(
                    connection, actor, sources, result, current, desired, owners, prune
                )
    except asyncpg.IntegrityConstraintViolationError as error:
        raise InventoryError([_integrity_problem(error)]) from None
    return result


def _check_applicable(
    result: InventoryPlan, expected: Sequence[Change] | None, *, force: bool
) -> None:
    """InventoryError when the plan is not the one shown, or prunes too much without force."""
    if expected is not None and tuple(expected) != result.changes:
        raise InventoryError(
            [
                "the inventory changed since the plan was shown (another apply?); "
                "nothing was changed: run the command again"
            ]
        )
    if result.too_large and not force:
        raise InventoryError([_too_large(result)])


async def _write_plan(
    connection: asyncpg.Connection,
    result: InventoryPlan,
    current: Inventory,
    desired: Inventory,
    actor: audit.Actor,
) -> None:
    """Archive or purge the removed customers, write the changes and the ownership claims; the
    deferrable constraints are checked at the end, so rows can move in any order."""
    await connection.execute(f"SET CONSTRAINTS {_DEFERRABLE} DEFERRED")
    removed_devices = {c.key for c in result.changes if c.kind == "device" and c.action == "remove"}
    await _archive_customers(connection, current, result.archived, removed_devices, actor.name)
    await _purge_customers(connection, result.purged)
    data_changes = [c for c in result.changes if c.fields != ("owner",)]
    await _write_changes(connection, data_changes, current, desired)
    if result.claims:
        await connection.executemany(
            "UPDATE customers SET owner = $2 WHERE id = $1", list(result.claims.items())
        )
    await connection.execute(f"SET CONSTRAINTS {_DEFERRABLE} IMMEDIATE")


def _too_large(result: InventoryPlan) -> str:
    return (
        f"the prune would remove {result.removing} of {result.stored} stored customers and "
        f"devices ({result.share:.0%}), more than inventory.max_prune_share "
        f"({result.max_prune_share:.0%}); nothing was changed: check the files' scope, or pass "
        "--force"
    )


def refusal(result: InventoryPlan) -> str | None:
    """Why an apply of this plan would be refused without ``force`` (None if it would not)."""
    return _too_large(result) if result.too_large else None


async def _audit_plan(
    connection: asyncpg.Connection,
    actor: audit.Actor,
    sources: Sources,
    result: InventoryPlan,
    current: Inventory,
    desired: Inventory,
    owners: Mapping[str, str | None],
    prune: bool,
) -> None:
    before_items = _by_key(current)
    after_items = _by_key(desired)
    for change in result.changes:
        before = before_items.get((change.kind, change.key))
        after = after_items.get((change.kind, change.key))
        before_json = None if before is None else dataclasses.asdict(before)
        after_json = None if after is None else dataclasses.asdict(after)
        action = f"inventory.{change.action}"
        if change.kind == "customer":
            if before_json is not None:
                before_json["owner"] = owners.get(change.key)
            if after_json is not None:
                after_json["owner"] = result.claims.get(change.key, owners.get(change.key))
            if change.action == "remove":
                action = "inventory.purge" if change.key in result.purged else "inventory.archive"
        await audit.record(
            connection,
            actor=actor,
            action=action,
            object_type=change.kind,
            object_id=change.key,
            before=before_json,
            after=after_json,
        )
    await audit.record(
        connection,
        actor=actor,
        action="inventory.prune" if prune else "inventory.apply",
        object_type="inventory",
        object_id=sources.prefix or ", ".join(s.name for s in sources.sources),
        after={**result.counts(), "files": [s.name for s in sources.sources]},
    )
