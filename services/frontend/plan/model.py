"""What a Frontend plan is made of: NAT port maps, SessionBorder objects, violations, budgets,
the customers' and the Frontend's plans, and the update variables they read."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.core.inventory import Frontend

# Update variables the plan reads (customer layer unless said otherwise).
PBX_ADDRESS_VARIABLE = "h-pbxip"


HTTPS_PORT_VARIABLE = "h-httpsport"


LDAPS_PORT_VARIABLE = "h-ldapport"


# The phones' RAS port (device_class phone in the example inventory).
RAS_PORT_VARIABLE = "h-rasport"


# Frontend layer: the MAC of the Frontend gateway itself, whose backups are checked.
FRONTEND_MAC_VARIABLE = "frontend-mac"


# H.225 RAS's registered port: a phone on it needs no alternate port on the Frontend.
DEFAULT_RAS_PORT = 1719


# CPE get SessionBorder objects; the customer PBX is in the provider's network.
CPE_CLASSES = ("phone", "gateway")


MASK = "***"


VARIABLE_REFERENCE = re.compile(r"#\(([^)]*)\)")


@dataclass(frozen=True)
class NatMap:
    protocol: str  # tcp | udp
    external_port: int
    address: str
    internal_port: int
    # https | ldaps for a customer's maps, the shared map's name otherwise.
    service: str
    customer: str | None = None
    # Where the external port came from: "scheme", "variable h-ldapport" or "settings".
    source: str = "scheme"


@dataclass(frozen=True)
class SessionBorder:
    """One SessionBorder object on the Frontend (seed "Configuration of customer related
    objects")."""

    customer: str
    mac: str
    long_name: str  # = CPE id
    internal_name: str  # "Registration to internal PBX" name = CPE id
    external_name: str  # "Registration from external" name = hardware id
    internal_pbx: str | None  # the customer PBX's address
    password: str | None = field(repr=False)  # the customer registration password
    pbx_password: bool = True

    def names(self) -> dict[str, str | None]:
        """Where it belongs and what it is called (everything but the passwords), for the plan's
        JSON and the staging scripts' context alike."""
        return {
            "customer": self.customer,
            "mac": self.mac,
            "long_name": self.long_name,
            "internal_name": self.internal_name,
            "external_name": self.external_name,
            "internal_pbx": self.internal_pbx,
        }


@dataclass(frozen=True)
class Violation:
    code: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message} [{self.code}]"


@dataclass(frozen=True)
class Budget:
    maps_used: int
    maps_limit: int
    shared_maps: int
    shared_reserve: int
    customers: int
    customers_limit: int


@dataclass(frozen=True)
class CustomerPlan:
    id: str
    pbx_address: str | None
    registration_password_set: bool
    maps: tuple[NatMap, ...]


@dataclass(frozen=True)
class FrontendPlan:
    frontend: Frontend
    customers: tuple[CustomerPlan, ...]
    shared_maps: tuple[NatMap, ...]
    session_borders: tuple[SessionBorder, ...]
    udp_nat_first: int
    udp_nat_last: int
    rtp_first: int
    rtp_last: int
    ras_port_alt: int | None
    budget: Budget
    # Everything that makes this plan wrong or unusable, each named (see check_plan).
    violations: tuple[Violation, ...]
    frontend_mac: str | None = None
    directory_map: NatMap | None = None

    @property
    def maps(self) -> tuple[NatMap, ...]:
        return tuple(m for c in self.customers for m in c.maps) + self.shared_maps


class UnknownFrontend(LookupError):
    pass
