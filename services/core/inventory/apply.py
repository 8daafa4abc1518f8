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

This module reads the files and writes; the plan itself (pure) is
:mod:`services.core.inventory.planning`, its names re-exported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from services.core import audit
from services.core.inventory.archive import _archive_customers, _purge_customers, archived_ids
from services.core.inventory.fileformat import parse_inventory_scoped
from services.core.inventory.model import Change, Inventory, InventoryError
from services.core.inventory.planning import InventoryPlan, InventorySource, Sources, plan
from services.core.inventory.rows import _DEFERRABLE, _integrity_problem, _load, _lock
from services.core.inventory.store import _write_changes

__all__ = [
    "API_OWNER",
    "InventoryPlan",
    "InventorySource",
    "Sources",
    "apply_sources",
    "plan",
    "read_sources",
    "refusal",
]

API_OWNER = "api"


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


async def _owners(connection: asyncpg.Connection) -> dict[str, str | None]:
    rows = await connection.fetch("SELECT id, owner FROM customers")
    return {row["id"]: row["owner"] for row in rows}


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
