"""The inventory's model: Frontends, customers, devices, layered variables, changes."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from services.core.identity import CONTROL_CHARACTERS, printable

NOTIFY_CHANNEL = "pbxfront_inventory"
# Taken (transaction-level) by every inventory writer so appliers and API writes serialise.
INVENTORY_LOCK_ID = 0x70627869  # "pbxi"

LAYERS = ("global", "frontend", "customer", "device_class", "device_type", "device")
DEVICE_CLASSES = ("phone", "gateway", "pbx")

# Same rule as settings.frontend in core/config/load.py (validate).
_FRONTEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# protocol.md §8: customer ids are "safe" ASCII; CPE ids are built from them. Never a path.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VARIABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z){_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_COUNTRY_CODE = re.compile(r"[1-9][0-9]{0,2}")
# protocol.md §2: scripts are line based; a control character in a value would inject a command.
_CONTROL = CONTROL_CHARACTERS
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_TEXT = 200
_MAX_VALUE = 4096
_MAX_LIMIT = 10000

_T = TypeVar("_T")

ChangeAction = Literal["add", "change", "remove"]
ChangeKind = Literal["frontend", "customer", "device", "variable"]


class InventoryError(Exception):
    """Invalid inventory data or a write the database state does not allow.

    ``problems`` lists every problem found, each ``"file: entry: field: why"`` (the file part only
    for inventory files). Raised before anything is changed.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frontend:
    id: str
    public_address: str
    internal_address: str
    # The seed's sbc index: the Frontend is sbc<index>.<h-domain> in DNS.
    index: int


@dataclass(frozen=True)
class Customer:
    id: str
    frontend: str
    name: str
    # The customer's e-mail domain (the customer PBX's System Name).
    system_name: str
    # Digits only: "49", "7031" (without the national prefix).
    country_code: str
    area_code: str
    international_prefix: str = "00"
    national_prefix: str = "0"
    # The PBX's own number within the area code, if it has one.
    subscriber_number: str | None = None
    registration_password: str | None = dataclasses.field(default=None, repr=False)
    login_password: str | None = dataclasses.field(default=None, repr=False)
    # Render secrets for devices that only claim their identity (URL arguments).
    allow_claimed_secrets: bool = False
    allow_anonymous_backup: bool = False
    allow_anonymous_contacts: bool = False


@dataclass(frozen=True)
class Device:
    mac: str  # normalised: 12 lower-case hex digits
    device_type: str  # upper case: IP232, IPVA
    device_class: str  # phone | gateway | pbx
    customer: str
    # Empty: derived from device_type and mac (IP232-01-02-03).
    hardware_id: str = ""
    cpe_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Variable:
    layer: str
    # '' (global), Frontend id, customer id, device class, device type or MAC, by layer.
    scope: str
    name: str
    value: str = dataclasses.field(repr=False)
    secret: bool = False

    @property
    def key(self) -> str:
        """``global/h-domain``, ``frontend/sb1/h-sbcextip``, ``device/009033010203/h-ntp``."""
        if self.layer == "global":
            return f"global/{self.name}"
        return f"{self.layer}/{self.scope}/{self.name}"

    def __repr__(self) -> str:
        shown = "***" if self.secret else repr(self.value)
        return (
            f"Variable(layer={self.layer!r}, scope={self.scope!r}, name={self.name!r}, "
            f"value={shown}, secret={self.secret!r})"
        )


def _layer_rank(layer: str) -> int:
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


@dataclass(frozen=True)
class Inventory:
    """The whole desired (or current) state, in a canonical order so ``==`` compares content."""

    frontends: tuple[Frontend, ...] = ()
    customers: tuple[Customer, ...] = ()
    devices: tuple[Device, ...] = ()
    variables: tuple[Variable, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "frontends", tuple(sorted(self.frontends, key=lambda f: f.id)))
        object.__setattr__(self, "customers", tuple(sorted(self.customers, key=lambda c: c.id)))
        object.__setattr__(self, "devices", tuple(sorted(self.devices, key=lambda d: d.mac)))
        object.__setattr__(
            self,
            "variables",
            tuple(sorted(self.variables, key=lambda v: (_layer_rank(v.layer), v.scope, v.name))),
        )


@dataclass(frozen=True)
class Scope:
    """An inventory file's explicit ``[scope]``: what a prune may remove besides what the file
    names and the customers it owns. ``shared``: the global, device-class and device-type
    variable layers (a file otherwise prunes only the layers and scopes it sets)."""

    customers: tuple[str, ...] = ()
    frontends: tuple[str, ...] = ()
    shared: bool = False


@dataclass(frozen=True)
class Change:
    action: ChangeAction
    kind: ChangeKind
    key: str
    # Names of the fields that differ (for "change"); never their values.
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        symbol = {"add": "+", "change": "~", "remove": "-"}[self.action]
        text = f"{symbol} {self.kind} {printable(self.key)}"
        if self.fields:
            text += f" ({', '.join(self.fields)})"
        return text


@dataclass(frozen=True)
class ResolvedVariable:
    name: str
    value: str = dataclasses.field(repr=False)
    secret: bool
    # Where the value came from, to explain a rendered script.
    layer: str
    scope: str
