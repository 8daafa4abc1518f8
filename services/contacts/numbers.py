"""Phone numbers as customers write them, normalised to E.164 with the customer's numbering plan.

Reverse lookup fails most often because a directory stores ``07031 730090`` while the PBX presents
``+497031730090``. So every number is stored in E.164, computed with ``phonenumbers`` from the
customer's inventory data (country code, area code, international and national prefix), and the
original is kept beside it. How a number is read, by its first characters:

- ``+`` or the international prefix (``00``): international, e.g. ``+49 (0) 7031 730090``;
- the national prefix (``0``): national, ``07031 730090`` -> country code + ``7031730090``;
- otherwise a number in the customer's own area (``730090`` -> ``+497031730090``), unless it has
  at most ``short_max_digits`` digits: then it is a short internal number (an extension) and kept
  as its digits. Up to :data:`EXTENSION_DIGITS` digits are never read as a number in the area.
  The customer's update variable ``contacts-short-digits`` (customer or global layer) sets the
  limit per customer; ``contacts.short_number_max_digits`` is the default, 0 = none.

A number ``phonenumbers`` does not consider valid for its country is refused with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import phonenumbers

from services.core.numbering import NumberingPlan

# Separators people put into numbers; anything else (letters, "ext.", "#") is refused.
_ALLOWED = re.compile(r"\+?[0-9 ()./\-\u00a0]+")
_UNEXPECTED = re.compile(r"[^0-9 ()./\-\u00a0]")
_NOT_DIGIT = re.compile(r"\D")
SHORT_DIGITS_VARIABLE = "contacts-short-digits"
# Without a prefix, this many digits or fewer are an extension, never a number in the area code.
EXTENSION_DIGITS = 4


class NumberError(ValueError):
    """Why a number cannot be normalised (safe to show: it quotes nothing but digits)."""


@dataclass
class Normalizer:
    """Normalises numbers for one plan, remembering each distinct input: exports repeat the
    company's numbers on many rows, and ``phonenumbers`` is the costly part of an upload."""

    plan: NumberingPlan
    _cache: dict[str, str | NumberError] = field(default_factory=dict)

    def normalize(self, raw: str) -> str | None:
        """E.164 (or the digits of a short internal number); None for an empty field;
        NumberError when the number cannot be read."""
        text = raw.strip()
        if not text:
            return None
        result = self._cache.get(text)
        if result is None:
            try:
                result = normalize_number(text, self.plan)
            except NumberError as error:
                result = error
            self._cache[text] = result
        if isinstance(result, NumberError):
            raise result
        return result


def normalize_number(text: str, plan: NumberingPlan) -> str:
    if re.search(r"[^\W\d_]", text):
        raise NumberError("letters in a number (write an extension as part of the number)")
    if not _ALLOWED.fullmatch(text):
        found = _UNEXPECTED.search(text[1:] if text.startswith("+") else text)
        bad = found.group() if found is not None else "+"
        raise NumberError(f"unexpected character {bad!r} in a number")
    international = text.startswith("+")
    if international:
        # "+49 (0) 7031 ...": the national prefix some people put in brackets is not dialled.
        text = text.replace("(0)", "")
    digits = _NOT_DIGIT.sub("", text)
    if not digits:
        raise NumberError("no digits")
    if (
        not international
        and plan.international_prefix
        and digits.startswith(plan.international_prefix)
    ):
        digits = digits[len(plan.international_prefix) :]
        international = True
    if international:
        candidates = [digits]
    elif plan.national_prefix and digits.startswith(plan.national_prefix):
        candidates = [plan.country_code + digits[len(plan.national_prefix) :]]
    elif len(digits) <= plan.short_max_digits:
        return digits
    elif len(digits) <= EXTENSION_DIGITS:
        raise NumberError(
            f"{digits} is a short internal number; this customer does not allow them "
            f"(update variable {SHORT_DIGITS_VARIABLE})"
        )
    elif plan.national_prefix:
        candidates = [plan.country_code + plan.area_code + digits]
    else:
        # Plans without a national prefix (closed numbering): the digits may already include
        # the area code.
        candidates = [plan.country_code + digits, plan.country_code + plan.area_code + digits]
    for candidate in candidates:
        e164 = _valid_e164(candidate)
        if e164 is not None:
            return e164
    raise NumberError(f"+{candidates[-1]} is not a valid number")


def _valid_e164(digits: str) -> str | None:
    """``digits`` (country code first) as E.164 if ``phonenumbers`` holds it valid."""
    if len(digits) > 15:
        return None
    number = _split(digits)
    if number is None or not phonenumbers.is_valid_number(number):
        # parse() also knows national prefixes written after the country code ("+49 0 7031").
        try:
            number = phonenumbers.parse("+" + digits, None)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(number):
            return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _split(digits: str) -> phonenumbers.PhoneNumber | None:
    """The number as written, without parse(): half the cost of normalising an upload, and
    enough for nearly every number (country codes are prefix-free, at most three digits)."""
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            if not national:
                return None
            zeros = len(national) - len(national.lstrip("0"))
            return phonenumbers.PhoneNumber(
                country_code=country_code,
                national_number=int(national),
                italian_leading_zero=zeros > 0 or None,
                number_of_leading_zeros=zeros if zeros > 1 else None,
            )
    return None
