"""One customer's directory in memory: entries, and the indexes that answer phone searches
without scanning.

Phones search names by prefix (``(|(sn=Mül*)(givenName=Mül*)(o=Mül*))``) and PBXs numbers by
equality in whatever form the call arrived. Names are kept per attribute as sorted casefolded
keys (a prefix is a bisect and a short walk); numbers as a dict from every variant to entries.
Anything else (``*x*``, negations, ranges) falls back to a scan of the customer's entries, which
is still exact, only slower.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from services.core.numbering import NumberingPlan
from services.directory import dn as dn_syntax
from services.directory.filters import (
    NUMBER_ATTRIBUTES,
    And,
    Equality,
    Filter,
    Or,
    Substrings,
    assertion_value,
    matches,
    substring_parts,
)
from services.directory.numbers import NUMBER_FORMATS, display, variants

CONTACT_CLASSES = ("top", "person", "organizationalPerson", "inetOrgPerson")
BASE_CLASSES = ("top", "dcObject", "organization")
# Quirk profiles a customer may name in its update variable directory-quirks.
QUIRKS = frozenset({"gigaset", "ascii"})
_NAME_ATTRIBUTES = ("cn", "sn", "givenname", "o", "company")

_ASCII_FOLD = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss", "ẞ": "SS"}
)


def ascii_fold(text: str) -> str:
    """German umlauts spelt out (ü -> ue), other accents dropped: for phones without them."""
    spelt = text.translate(_ASCII_FOLD)
    decomposed = unicodedata.normalize("NFKD", spelt)
    return "".join(char for char in decomposed if char.isascii())


@dataclass(frozen=True)
class CustomerRecord:
    """What the directory needs to know about a customer (inventory customers and variables,
    contact_current)."""

    id: str
    name: str
    registration_password: str | None = field(repr=False)
    plan: NumberingPlan
    # The customer's update variables directory-number-format and directory-quirks ('' = none).
    number_format: str = ""
    quirks: str = ""
    # contact_current.version, None while the customer has no contacts.
    version: int | None = None

    @property
    def settings(self) -> tuple[object, ...]:
        """Everything an index is built from besides the contacts themselves."""
        return (self.id, self.name, self.plan, self.number_format, self.quirks)

    def quirk_set(self) -> frozenset[str]:
        names = {part.strip().lower() for part in self.quirks.split(",")}
        return frozenset(names & QUIRKS)


@dataclass(frozen=True)
class Contact:
    """One row of contact_entries (the current version)."""

    line: int
    surname: str
    given_name: str
    company: str
    business_e164: str | None
    mobile_e164: str | None


# Matching forms shared by every entry (not one copy per contact).
_CONTACT_CLASSES_MATCH = tuple(name.casefold() for name in CONTACT_CLASSES)
_BASE_CLASSES_MATCH = tuple(name.casefold() for name in BASE_CLASSES)

Attributes = list[tuple[str, str, list[str]]]


@dataclass(frozen=True)
class Presentation:
    """How one customer's contacts are shown; shared by all entries of its directory."""

    base_dn: str
    plan: NumberingPlan
    number_format: str
    gigaset: bool = False
    ascii: bool = False


class Entry:
    """One entry: its match table (see filters.matches) and how to show it. A contact's
    attributes are rendered when it is returned, not kept: a directory holds thousands of
    entries and returns a few dozen."""

    __slots__ = ("_contact", "_dn", "_fixed", "_presentation", "match")

    def __init__(
        self,
        match: dict[str, tuple[str, ...]],
        *,
        dn: str | None = None,
        fixed: Attributes | None = None,
        contact: Contact | None = None,
        presentation: Presentation | None = None,
    ) -> None:
        self.match = match
        self._dn = dn
        self._fixed = fixed
        self._contact = contact
        self._presentation = presentation

    @property
    def dn(self) -> str:
        if self._dn is not None:
            return self._dn
        assert self._contact is not None
        assert self._presentation is not None
        return f"uid={self._contact.line},{self._presentation.base_dn}"

    @property
    def attributes(self) -> Attributes:
        """(attribute as shown, canonical name, values) in the order they are returned."""
        if self._fixed is not None:
            return self._fixed
        assert self._contact is not None
        assert self._presentation is not None
        return render(self._contact, self._presentation)


def _attributes(shown: Iterable[tuple[str, list[str]]]) -> Attributes:
    return [(name, name.lower(), values) for name, values in shown if values]


def base_dn(customer_id: str) -> str:
    return "dc=" + dn_syntax.escape(customer_id)


def _common_name(contact: Contact) -> str:
    common = " ".join(part for part in (contact.given_name, contact.surname) if part)
    return common or contact.company or f"line {contact.line}"


def render(contact: Contact, presentation: Presentation) -> Attributes:
    names = {
        "cn": _common_name(contact),
        "sn": contact.surname,
        "givenName": contact.given_name,
        "o": contact.company,
    }
    if presentation.ascii:
        names = {key: ascii_fold(value) for key, value in names.items()}
    shown: list[tuple[str, list[str]]] = [
        ("objectClass", list(CONTACT_CLASSES)),
        ("cn", [names["cn"]]),
        ("sn", [names["sn"] or names["cn"]]),  # sn is mandatory for person
        ("givenName", [names["givenName"]]),
        ("o", [names["o"]]),
        # innovaphone's template asks for "company" (an Active Directory name).
        ("company", [names["o"]]),
        ("uid", [str(contact.line)]),
    ]
    for name, stored in (
        ("telephoneNumber", contact.business_e164),
        ("mobile", contact.mobile_e164),
    ):
        if stored:
            shown.append(
                (
                    name,
                    [
                        display(
                            stored,
                            presentation.plan,
                            presentation.number_format,
                            gigaset=presentation.gigaset,
                        )
                    ],
                )
            )
    return [(name, name.lower(), values) for name, values in shown if values and values[0]]


def contact_entry(contact: Contact, presentation: Presentation) -> Entry:
    match: dict[str, tuple[str, ...]] = {
        "objectclass": _CONTACT_CLASSES_MATCH,
        "uid": (str(contact.line),),
    }
    common = _common_name(contact)
    original = {
        "cn": common,
        "sn": contact.surname or common,
        "givenname": contact.given_name,
        "o": contact.company,
        "company": contact.company,
    }
    for attribute in _NAME_ATTRIBUTES:
        value = original[attribute]
        if not value:
            continue
        folded = value.casefold()
        if presentation.ascii:
            spelt = ascii_fold(value).casefold()
            match[attribute] = (folded,) if spelt == folded else (folded, spelt)
        else:
            match[attribute] = (folded,)
    for attribute, stored in (
        ("telephonenumber", contact.business_e164),
        ("mobile", contact.mobile_e164),
    ):
        if stored:
            match[attribute] = tuple(
                variants(stored, presentation.plan, gigaset=presentation.gigaset)
            )
    return Entry(match, contact=contact, presentation=presentation)


def customer_entry(customer: CustomerRecord) -> Entry:
    shown = [
        ("objectClass", list(BASE_CLASSES)),
        ("dc", [customer.id]),
        ("o", [customer.name or customer.id]),
    ]
    match = {
        "objectclass": _BASE_CLASSES_MATCH,
        "dc": (customer.id.casefold(),),
        "o": ((customer.name or customer.id).casefold(),),
    }
    return Entry(match, dn=base_dn(customer.id), fixed=_attributes(shown))


def _add(index: dict[str, int | tuple[int, ...]], key: str, position: int) -> None:
    # One int per key, a tuple only for the rare shared number: a list each would double the
    # index's memory.
    existing = index.get(key)
    if existing is None:
        index[key] = position
    elif isinstance(existing, int):
        index[key] = (existing, position)
    else:
        index[key] = (*existing, position)


class CustomerDirectory:
    """A customer's entries and indexes; immutable once built (replaced, never updated)."""

    def __init__(
        self, customer: CustomerRecord, contacts: Iterable[Contact], default_number_format: str
    ) -> None:
        self.customer = customer
        number_format = customer.number_format.strip().lower()
        if number_format not in NUMBER_FORMATS:
            number_format = default_number_format
        quirks = customer.quirk_set()
        self.presentation = Presentation(
            base_dn(customer.id),
            customer.plan,
            number_format,
            gigaset="gigaset" in quirks,
            ascii="ascii" in quirks,
        )
        self.base = customer_entry(customer)
        ordered = sorted(
            contacts,
            key=lambda c: (
                c.surname.casefold(),
                c.given_name.casefold(),
                c.company.casefold(),
                c.line,
            ),
        )
        self.entries = [contact_entry(contact, self.presentation) for contact in ordered]
        self.by_uid = {
            entry.match["uid"][0]: position for position, entry in enumerate(self.entries)
        }
        # canonical attribute -> (sorted keys, entry position of each key)
        self._names: dict[str, tuple[list[str], list[int]]] = {}
        for attribute in _NAME_ATTRIBUTES:
            pairs = sorted(
                (value, position)
                for position, entry in enumerate(self.entries)
                for value in entry.match.get(attribute, ())
            )
            self._names[attribute] = ([key for key, _ in pairs], [pos for _, pos in pairs])
        self._numbers: dict[str, dict[str, int | tuple[int, ...]]] = {
            name: {} for name in NUMBER_ATTRIBUTES
        }
        for position, entry in enumerate(self.entries):
            for attribute in NUMBER_ATTRIBUTES:
                for form in entry.match.get(attribute, ()):
                    _add(self._numbers[attribute], form, position)

    @property
    def version(self) -> int | None:
        return self.customer.version

    def _prefix(self, attribute: str, prefix: str, exact: bool) -> set[int]:
        keys, positions = self._names[attribute]
        found: set[int] = set()
        index = bisect.bisect_left(keys, prefix)
        while index < len(keys) and keys[index].startswith(prefix):
            if not exact or keys[index] == prefix:
                found.add(positions[index])
            elif exact:
                break
            index += 1
        return found

    def candidates(self, node: Filter) -> set[int] | None:
        """Positions of entries that may match (a superset), or None when only a scan can
        tell. Every candidate is still checked against the whole filter."""
        if isinstance(node, Equality):
            wanted = assertion_value(node.attribute, node.value)
            if node.attribute in NUMBER_ATTRIBUTES:
                hit = self._numbers[node.attribute].get(wanted) if wanted else None
                if hit is None:
                    return set()
                return {hit} if isinstance(hit, int) else set(hit)
            if node.attribute in self._names and wanted is not None:
                return self._prefix(node.attribute, wanted, exact=True)
            return None
        if isinstance(node, Substrings) and node.attribute in self._names:
            initial, _middle, _final = substring_parts(node)
            if initial:
                return self._prefix(node.attribute, initial, exact=False)
            return None
        if isinstance(node, And):
            best: set[int] | None = None
            for child in node.children:
                found = self.candidates(child)
                if found is not None:
                    best = found if best is None else best & found
            return best
        if isinstance(node, Or):
            union: set[int] = set()
            for child in node.children:
                found = self.candidates(child)
                if found is None:
                    return None
                union |= found
            return union
        return None

    def search(self, node: Filter, *, include_base: bool) -> Iterator[Entry]:
        """Matching entries in directory order (surname, given name), the base entry first."""
        if include_base and matches(node, self.base.match):
            yield self.base
        found = self.candidates(node)
        if found is None:
            chosen: Iterable[Entry] = self.entries
        else:
            chosen = (self.entries[position] for position in sorted(found))
        for entry in chosen:
            if matches(node, entry.match):
                yield entry
