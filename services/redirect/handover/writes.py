"""Who may write what, and whether anything changes: one registration, a bulk import."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.core import errors
from services.redirect.handover.inputs import (
    MappingInput,
    Outcome,
    RowError,
    owned_by_other_provider,
)
from services.redirect.handover.targets import (
    StoredMapping,
)


def plan_registration(
    existing: StoredMapping | None,
    provider: str,
    wanted: MappingInput,
    *,
    transfer_allowed: bool,
) -> Outcome:
    """What registering ``wanted`` for ``provider`` does. Another provider's device needs a valid
    transfer token (``transfer_allowed``); without one: Conflict ``owned_by_other_provider``."""
    if existing is None:
        return Outcome.CREATED
    if existing.provider != provider:
        if not transfer_allowed:
            raise owned_by_other_provider(existing.mac)
        return Outcome.TRANSFERRED
    if existing.same_target(wanted):
        return Outcome.UNCHANGED
    return Outcome.UPDATED


@dataclass(frozen=True)
class ImportRow:
    """One parsed row: ``mapping`` or ``problem`` (an Invalid message)."""

    row: int
    mapping: MappingInput | None
    problem: str | None = None
    # The MAC as far as it could be read, for the result.
    mac: str | None = None


@dataclass
class RowResult:
    row: int
    mac: str | None
    result: Outcome
    error: RowError | None = None
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"row": self.row, "mac": self.mac, "result": self.result.value}
        if self.error is not None:
            data["error"] = self.error.value
            data["message"] = self.message
        return data


def plan_import(
    rows: Sequence[ImportRow],
    existing: Mapping[str, StoredMapping],
    provider: str,
    known_frontends: set[str],
) -> tuple[list[RowResult], list[MappingInput]]:
    """One result per row, in order, and the mappings to write (created or updated ones).

    A MAC seen in an earlier row is a ``duplicate``; another provider's MAC is
    ``owned_by_other_provider`` (imports never transfer); a row identical to what is stored is
    ``unchanged``, so running one import twice changes nothing the second time.
    """
    results: list[RowResult] = []
    writes: list[MappingInput] = []
    first_row: dict[str, int] = {}
    for item in rows:
        wanted = item.mapping
        refused = _row_refusal(item, first_row, known_frontends)
        if refused is None and wanted is not None:
            try:
                outcome = plan_registration(
                    existing.get(wanted.mac), provider, wanted, transfer_allowed=False
                )
            except errors.Conflict as conflict:
                refused = RowError.OWNED_BY_OTHER_PROVIDER, str(conflict)
        if refused is not None or wanted is None:
            error, message = refused or (RowError.INVALID, "invalid row")
            mac = wanted.mac if wanted is not None else item.mac
            results.append(RowResult(item.row, mac, Outcome.ERROR, error, message))
            continue
        results.append(RowResult(item.row, wanted.mac, outcome))
        if outcome in (Outcome.CREATED, Outcome.UPDATED):
            writes.append(wanted)
    return results, writes


def _row_refusal(
    item: ImportRow, first_row: dict[str, int], known_frontends: set[str]
) -> tuple[RowError, str] | None:
    """Why a row cannot be planned at all (invalid, a duplicate MAC, an unknown Frontend);
    records the first row of each MAC."""
    wanted = item.mapping
    if wanted is None:
        return RowError.INVALID, item.problem or "invalid row"
    if wanted.mac in first_row:
        return RowError.DUPLICATE, f"same device as row {first_row[wanted.mac]}"
    first_row[wanted.mac] = item.row
    if wanted.frontend is not None and wanted.frontend not in known_frontends:
        return RowError.UNKNOWN_FRONTEND, f"no Frontend {wanted.frontend} in the inventory"
    return None
