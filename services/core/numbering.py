"""A customer's numbering plan, as the inventory's customers table holds it: what the contacts
drop normalises customers' numbers to E.164 with, and what the directory expands each stored
E.164 number back into the forms phones and PBXs search for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NumberingPlan:
    """Digits only. ``short_max_digits``: numbers of at most this many digits without a prefix
    are short internal numbers (extensions), not numbers in the area code (the contacts drop's
    rule; 0 = none)."""

    country_code: str
    area_code: str
    international_prefix: str = "00"
    national_prefix: str = "0"
    short_max_digits: int = 0
