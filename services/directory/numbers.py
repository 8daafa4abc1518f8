"""Telephone numbers in every form a phone or PBX presents them, from the stored E.164.

A PBX doing reverse lookup searches for the caller's number as it arrived: E.164
(``+497031730090``), with the international prefix (``00497031730090``), national
(``07031730090``), local within the customer's area code (``730090``), or bare digits
(``497031730090``). Each stored number is expanded once, when a customer's directory is loaded,
into the set of these forms for that customer's numbering plan; a search then is one lookup.
"""

from __future__ import annotations

import re

from services.core.numbering import NumberingPlan

# What people and devices put between digits.
_SEPARATORS = re.compile(r"[\s\-/().\u00a0]+")
NUMBER_FORMATS = ("e164", "international", "national", "digits")


def normalize_query(text: str) -> str | None:
    """A searched number without separators (``07031 730090`` -> ``07031730090``); None when
    it is not a number at all (letters), so a name search never matches a number."""
    compact = _SEPARATORS.sub("", text)
    body = compact[1:] if compact.startswith("+") else compact
    if not body or not body.isascii() or not body.isdigit():
        return None
    return compact


def normalize_fragment(text: str) -> str:
    """A substring filter's part: separators removed, nothing else checked (``*730 090``)."""
    return _SEPARATORS.sub("", text)


def variants(stored: str, plan: NumberingPlan, *, gigaset: bool = False) -> frozenset[str]:
    """Every form ``stored`` (E.164 with "+", or the digits of an internal number) is searched
    by. Gigaset phones show and search "+" as "000" (inno-thinyldap's quirk)."""
    if not stored.startswith("+"):
        return frozenset({stored})
    digits = stored[1:]
    forms = {stored, digits, plan.international_prefix + digits}
    if gigaset:
        forms.add("000" + digits)
    if plan.country_code and digits.startswith(plan.country_code):
        significant = digits[len(plan.country_code) :]
        forms.add(plan.national_prefix + significant)
        forms.add(significant)
        if plan.area_code and significant.startswith(plan.area_code):
            local = significant[len(plan.area_code) :]
            if local:
                forms.add(local)
    return frozenset(form for form in forms if form)


def display(stored: str, plan: NumberingPlan, number_format: str, *, gigaset: bool = False) -> str:
    """How a number is returned to the phone: ``number_format`` is one of NUMBER_FORMATS."""
    if not stored.startswith("+"):
        return stored
    digits = stored[1:]
    domestic = bool(plan.country_code) and digits.startswith(plan.country_code)
    if number_format == "national" and domestic:
        return plan.national_prefix + digits[len(plan.country_code) :]
    if number_format in ("international", "national"):
        return plan.international_prefix + digits
    if number_format == "digits":
        return digits
    return "000" + digits if gigaset else stored
