"""A mapping's input as operators and providers send it, checked: MAC, provider, Frontend, URL,
facts; the outcomes and row errors of a write."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.core import errors
from services.core.identity import CONTROL_CHARACTERS as CONTROL_CHARACTERS  # re-exported
from services.core.identity import (
    IdentityError,
    normalize_mac,
    printable,
)

# The paths a factory-new device polls (seed: http://<redirect-host>/redirect.php; protocol.md §1:
# the V10 factory default http://config.innovaphone.com/init).
DEVICE_PATHS = ("/redirect.php", "/init")


# innovaphone's IEEE OUI (00-90-33): preferred when a hardware id (last three MAC bytes) fits
# several registered MACs. [I]
INNOVAPHONE_OUI = "009033"


_FRONTEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


_PROVIDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


_URL = re.compile(r"https?://(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?(/[!-~]*)?")


_FACT_NAME = re.compile(r"r-[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


# protocol.md §2: `mod cmd UP1 setvar r-<name> <value>` is one line of space-separated words.
_FACT_VALUE = re.compile(r"[!-~\u00a0-\uffff]{1,200}")


MAX_FACTS = 20


MAX_URL = 512


class Outcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    TRANSFERRED = "transferred"
    ERROR = "error"


class RowError(enum.StrEnum):
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    UNKNOWN_FRONTEND = "unknown_frontend"
    OWNED_BY_OTHER_PROVIDER = "owned_by_other_provider"


def owned_by_other_provider(mac: str) -> errors.Conflict:
    return errors.Conflict(
        f"owned_by_other_provider: {mac} is registered by another provider; "
        "its owner can issue a transfer token"
    )


@dataclass(frozen=True)
class MappingInput:
    """What a provider wants for one device: a Frontend id or an explicit URL, and facts."""

    mac: str
    frontend: str | None = None
    url: str | None = None
    facts: Mapping[str, str] = field(default_factory=dict)


def check_mac(value: object) -> str:
    """A MAC (= an innovaphone serial number) in any usual spelling -> ``009033010203``."""
    if not isinstance(value, str):
        raise errors.Invalid("mac: must be a string")
    try:
        return normalize_mac(value)
    except IdentityError as error:
        raise errors.Invalid(f"mac: {error}") from None


def check_provider_id(value: object) -> str:
    if not isinstance(value, str) or not _PROVIDER_ID.fullmatch(value):
        raise errors.Invalid(
            "provider: must be a safe id (letters, digits, '.', '_', '-'; at most 64)"
        )
    return value


def check_frontend_id(value: object) -> str:
    if not isinstance(value, str) or not _FRONTEND_ID.fullmatch(value):
        shown = printable(repr(value), 60)
        raise errors.Invalid(f"frontend: must be a Frontend id such as sb1, not {shown}")
    return value


def check_url(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL or not _URL.fullmatch(value):
        raise errors.Invalid(
            f"url: must be an http(s) URL of at most {MAX_URL} printable characters without "
            "spaces, e.g. https://fe.example/DRIVE/CF0/update/staging.txt"
        )
    return value


def fact_name(name: str) -> str:
    """``type`` or ``r-type`` -> ``r-type`` (protocol.md §2: the redirect service's facts)."""
    candidate = name.strip()
    if not candidate.startswith("r-"):
        candidate = "r-" + candidate
    if not _FACT_NAME.fullmatch(candidate):
        raise errors.Invalid(
            f"facts: {printable(repr(name), 60)} is not a fact name (r-<letters, digits, . _ ->)"
        )
    return candidate


def check_facts(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise errors.Invalid('facts: must be an object such as {"r-type": "IP232"}')
    if len(value) > MAX_FACTS:
        raise errors.Invalid(f"facts: at most {MAX_FACTS}")
    facts: dict[str, str] = {}
    for name, fact_value in value.items():
        key = fact_name(str(name))
        if (
            not isinstance(fact_value, str)
            or not _FACT_VALUE.fullmatch(fact_value)
            or CONTROL_CHARACTERS.search(fact_value)
        ):
            raise errors.Invalid(
                f"facts: {key}: the value must be 1 to 200 characters without spaces "
                "(it becomes one word of a device command)"
            )
        facts[key] = fact_value
    return dict(sorted(facts.items()))


def parse_fact_assignments(values: Iterable[str]) -> dict[str, str]:
    """``["r-type=IP232", "site=hq"]`` (CLI, CSV) -> checked facts."""
    pairs: dict[str, str] = {}
    for assignment in values:
        name, sep, value = assignment.partition("=")
        if not sep:
            raise errors.Invalid(f"facts: {printable(repr(assignment), 60)}: expected name=value")
        pairs[name] = value
    return check_facts(pairs)


def check_mapping(
    mac: object, frontend: object = None, url: object = None, facts: object = None
) -> MappingInput:
    """One mapping's input, normalised; Invalid naming the field otherwise."""
    checked_mac = check_mac(mac)
    checked_frontend = None if frontend in (None, "") else check_frontend_id(frontend)
    checked_url = None if url in (None, "") else check_url(url)
    if checked_frontend is None and checked_url is None:
        raise errors.Invalid("frontend: a Frontend id or a url is required")
    return MappingInput(checked_mac, checked_frontend, checked_url, check_facts(facts))
