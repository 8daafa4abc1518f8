"""Which versions to keep: the last N, the newest of each of the last D days and of each of the
last M months; the newest version always. Plain functions over plain values (the caller passes
``now``, so tests control the clock)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.core.config import BackupSettings
from services.core.identity import printable

log = logging.getLogger(__name__)

# Update variables (global or customer layer) that override the settings per customer.
KEEP_LAST_VARIABLE = "backup-keep-last"
KEEP_DAYS_VARIABLE = "backup-keep-days"
KEEP_MONTHS_VARIABLE = "backup-keep-months"
STALE_HOURS_VARIABLE = "backup-stale-hours"
POLICY_VARIABLES = (
    KEEP_LAST_VARIABLE,
    KEEP_DAYS_VARIABLE,
    KEEP_MONTHS_VARIABLE,
    STALE_HOURS_VARIABLE,
)


@dataclass(frozen=True)
class Policy:
    keep_last: int
    keep_days: int
    keep_months: int
    stale_after_hours: float

    @classmethod
    def defaults(cls, settings: BackupSettings) -> Policy:
        return cls(
            settings.keep_last,
            settings.keep_days,
            settings.keep_months,
            settings.stale_after_hours,
        )


@dataclass(frozen=True)
class VersionStamp:
    id: int
    received_at: datetime


def _number(variables: Mapping[str, str], name: str, default: float, low: float) -> float:
    raw = variables.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = low - 1
    if value < low:
        log.warning(
            "update variable %s = %r is not a number >= %s; using %s",
            name,
            printable(raw),
            low,
            default,
        )
        return default
    return value


def policy_for(defaults: Policy, variables: Mapping[str, str]) -> Policy:
    """The customer's policy: the settings, overridden by its (resolved) update variables."""
    return Policy(
        keep_last=int(_number(variables, KEEP_LAST_VARIABLE, defaults.keep_last, 1)),
        keep_days=int(_number(variables, KEEP_DAYS_VARIABLE, defaults.keep_days, 0)),
        keep_months=int(_number(variables, KEEP_MONTHS_VARIABLE, defaults.keep_months, 0)),
        stale_after_hours=_number(variables, STALE_HOURS_VARIABLE, defaults.stale_after_hours, 1),
    )


def _month_index(moment: datetime) -> int:
    return moment.year * 12 + moment.month - 1


def versions_to_keep(versions: Sequence[VersionStamp], policy: Policy, now: datetime) -> set[int]:
    """Ids of the versions the policy keeps. Days and months are UTC calendar days and months,
    counted back from ``now``'s (today is the first of the ``keep_days``)."""
    newest_first = sorted(versions, key=lambda v: v.id, reverse=True)
    keep = {v.id for v in newest_first[: max(policy.keep_last, 1)]}
    today = now.astimezone(UTC).date()
    first_day = today - timedelta(days=policy.keep_days - 1)
    this_month = _month_index(now.astimezone(UTC))
    first_month = this_month - (policy.keep_months - 1)
    days_seen: set[object] = set()
    months_seen: set[int] = set()
    for version in newest_first:
        moment = version.received_at.astimezone(UTC)
        day = moment.date()
        if policy.keep_days > 0 and first_day <= day <= today and day not in days_seen:
            days_seen.add(day)
            keep.add(version.id)
        month = _month_index(moment)
        if (
            policy.keep_months > 0
            and first_month <= month <= this_month
            and month not in months_seen
        ):
            months_seen.add(month)
            keep.add(version.id)
    return keep


def versions_to_delete(
    versions: Sequence[VersionStamp], policy: Policy, now: datetime
) -> list[int]:
    """Ids to delete, oldest first; never the newest version."""
    keep = versions_to_keep(versions, policy, now)
    return sorted(v.id for v in versions if v.id not in keep)


def is_stale(last_put_at: datetime, policy: Policy, now: datetime) -> bool:
    return now - last_put_at > timedelta(hours=policy.stale_after_hours)
