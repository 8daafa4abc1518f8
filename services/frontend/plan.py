"""The Frontend plan: what the seed configures by hand on a Frontend, computed from the inventory.

Seed sources (``seed/howto-hosting-with-v10.txt``):

- "Frontend/NAT": inbound NAT maps for HTTPS and LDAPS to each customer PBX, 2 per customer,
  about 290 per Frontend, about 20 reserved for shared services (Metadir, fax, reporting), so
  about 135 customers. The numbering scheme: 4-digit external ports, the first digit the service
  (8 HTTPS, 9 LDAPS to the PBX), the other three the last octet of the PBX's internal address:
  ``9007 -> 10.0.0.7:636``.
- "Kerberos": the shared UDP maps 7088/7089/7464/7465 to the Kerberos servers.
- "Frontend/NAT": a UDP NAT port range at least as large as the number of customer PBXs, not
  overlapping the UDP-RTP range (16384-32767 by default).
- "Frontend/PBX" and "Configuration of customer related objects": one SessionBorder object per
  potential CPE: Long Name and "Registration to internal PBX" name = CPE id, "Registration from
  external" name = hardware id, Password = the customer registration password, PBX Password
  ticked.
- "Alternate RAS port": the Frontend listens for RAS on the port the phones use
  (``config add H323 /ras-port-alt xxxx``).

**The encoding rule.** Three digits hold 000-255, so every IPv4 last octet fits and the port stays
at most 9255. What the scheme cannot encode: an address that is not an IPv4 address (a host
name, IPv6), and two customer PBXs of one Frontend whose addresses share the last octet
(10.0.0.7 and 10.0.1.7 would both be 9007: one customer's phones would reach the other's PBX).
So the customer PBXs of one Frontend need distinct last octets, in practice one /24 per Frontend.

Everything here is a plain function of an :class:`Inventory` and the settings; no I/O.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.core.config import FrontendPlanSettings, parse_shared_map
from services.core.identity import IdentityError, normalize_mac
from services.core.inventory import Customer, Device, Frontend, Inventory
from services.core.inventory.variables import (
    LayeredVariables,
    customer_scopes,
    device_scopes,
    frontend_scopes,
)

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

_VARIABLE_REFERENCE = re.compile(r"#\(([^)]*)\)")


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


# --- the plan ----------------------------------------------------------------------------------


def scheme_port(digit: int, address: str) -> int:
    """The seed's external port: ``scheme_port(9, "10.0.0.7") == 9007``. ValueError for an
    address the scheme cannot encode (not IPv4)."""
    parsed = ipaddress.ip_address(address)
    if not isinstance(parsed, ipaddress.IPv4Address):
        raise ValueError("the scheme encodes the last octet of an IPv4 address; this is IPv6")
    return digit * 1000 + int(str(parsed).rsplit(".", 1)[1])


def _port(text: str) -> int | None:
    if re.fullmatch(r"\d{1,5}", text) and 1 <= int(text) <= 65535:
        return int(text)
    return None


def _customer_plan(
    customer: Customer,
    variables: Mapping[str, str],
    settings: FrontendPlanSettings,
    violations: list[Violation],
) -> CustomerPlan:
    subject = f"customer {customer.id}"
    address = variables.get(PBX_ADDRESS_VARIABLE)
    if not customer.registration_password:
        violations.append(
            Violation(
                "no-registration-password",
                subject,
                "no registration password: its SessionBorder objects would have none, and the "
                "Frontend never allows registrations without password (seed: Security)",
            )
        )
    if not address:
        violations.append(
            Violation(
                "no-pbx-address",
                subject,
                f"update variable {PBX_ADDRESS_VARIABLE} (the customer PBX's internal address) is "
                "not set: no NAT maps",
            )
        )
        return CustomerPlan(customer.id, None, bool(customer.registration_password), ())
    try:
        ipaddress.ip_address(address)
    except ValueError:
        violations.append(
            Violation(
                "unencodable-address",
                subject,
                f"{PBX_ADDRESS_VARIABLE} = {address!r} is not an IP address: the port scheme "
                "encodes the last octet of an IPv4 address",
            )
        )
        return CustomerPlan(customer.id, address, bool(customer.registration_password), ())
    maps: list[NatMap] = []
    for service, digit, internal_port, variable in (
        ("https", settings.https_digit, settings.https_port, HTTPS_PORT_VARIABLE),
        ("ldaps", settings.ldaps_digit, settings.ldaps_port, LDAPS_PORT_VARIABLE),
    ):
        override = variables.get(variable)
        if override is not None:
            external = _port(override)
            if external is None:
                violations.append(
                    Violation(
                        "invalid-port",
                        subject,
                        f"update variable {variable} = {override!r} is not a port (1..65535)",
                    )
                )
                continue
            source = f"variable {variable}"
        else:
            try:
                external = scheme_port(digit, address)
            except ValueError as error:
                violations.append(
                    Violation("unencodable-address", subject, f"{PBX_ADDRESS_VARIABLE}: {error}")
                )
                continue
            source = "scheme"
        maps.append(NatMap("tcp", external, address, internal_port, service, customer.id, source))
    return CustomerPlan(customer.id, address, bool(customer.registration_password), tuple(maps))


def _shared_maps(
    settings: FrontendPlanSettings, variables: Mapping[str, str], violations: list[Violation]
) -> list[NatMap]:
    maps: list[NatMap] = []
    for text in settings.shared_maps:
        name, protocol, external, address, internal = parse_shared_map(text)
        reference = _VARIABLE_REFERENCE.fullmatch(address)
        if reference:
            value = variables.get(reference.group(1))
            if not value:
                violations.append(
                    Violation(
                        "shared-map-address",
                        f"shared map {name}",
                        f"variable {reference.group(1)} (its address) is not set on this Frontend",
                    )
                )
                continue
            address = value
        maps.append(NatMap(protocol, external, address, internal, name, None, "settings"))
    return maps


def _session_borders(
    customers: Sequence[Customer],
    devices: Sequence[Device],
    pbx_addresses: Mapping[str, str | None],
    violations: list[Violation],
) -> list[SessionBorder]:
    by_id = {c.id: c for c in customers}
    borders: list[SessionBorder] = []
    for device in devices:
        customer = by_id.get(device.customer)
        if customer is None or device.device_class not in CPE_CLASSES:
            continue
        if not device.cpe_id:
            violations.append(
                Violation(
                    "no-cpe-id",
                    f"device {device.hardware_id} ({device.mac})",
                    f"customer {customer.id}'s {device.device_class} has no CPE id: no "
                    "SessionBorder object (its Long Name and internal registration name)",
                )
            )
            continue
        borders.append(
            SessionBorder(
                customer=customer.id,
                mac=device.mac,
                long_name=device.cpe_id,
                internal_name=device.cpe_id,
                external_name=device.hardware_id,
                internal_pbx=pbx_addresses.get(customer.id),
                password=customer.registration_password,
            )
        )
    return sorted(borders, key=lambda b: (b.customer, b.long_name))


def _ras_port_alt(
    customers: Sequence[Customer],
    devices: Sequence[Device],
    variables: LayeredVariables,
    frontend: Frontend,
    violations: list[Violation],
) -> int | None:
    by_id = {c.id: c for c in customers}
    ports: dict[int, list[str]] = {}
    for device in devices:
        customer = by_id.get(device.customer)
        if customer is None or device.device_class != "phone":
            continue
        value = variables.values(device_scopes(device, customer)).get(RAS_PORT_VARIABLE)
        port = _port(value) if value else None
        if port is not None and port != DEFAULT_RAS_PORT:
            ports.setdefault(port, []).append(device.hardware_id)
    if len(ports) > 1:
        listing = ", ".join(
            f"{port} ({', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''})"
            for port, names in sorted(ports.items())
        )
        violations.append(
            Violation(
                "ras-port-alt",
                f"frontend {frontend.id}",
                f"its phones use more than one alternate RAS port ({listing}); the Frontend "
                "listens on one (config add H323 /ras-port-alt)",
            )
        )
    return min(ports) if ports else None


def _clashes(maps: Sequence[NatMap], violations: list[Violation]) -> None:
    by_port: dict[tuple[str, int], list[NatMap]] = {}
    for nat in maps:
        by_port.setdefault((nat.protocol, nat.external_port), []).append(nat)
    for (protocol, port), users in sorted(by_port.items()):
        if len(users) < 2:
            continue
        names = [
            f"customer {m.customer}" if m.customer else f"shared map {m.service}" for m in users
        ]
        targets = ", ".join(
            f"{name} -> {m.address}:{m.internal_port} ({m.service}, {m.source})"
            for name, m in zip(names, users, strict=True)
        )
        customers = [m.customer for m in users if m.customer]
        text = f"{protocol} port {port} is mapped more than once: {targets}"
        if len(customers) > 1 and any(m.service == "ldaps" for m in users):
            text += (
                f"; the phones of {customers[0]} would read {customers[1]}'s PBX directory "
                "(or the other way round)"
            )
        violations.append(Violation("port-clash", f"{protocol} port {port}", text))


def _same_addresses(plans: Sequence[CustomerPlan], violations: list[Violation]) -> None:
    by_address: dict[str, list[str]] = {}
    for plan in plans:
        if plan.pbx_address:
            by_address.setdefault(plan.pbx_address, []).append(plan.id)
    for address, customers in sorted(by_address.items()):
        if len(customers) > 1:
            violations.append(
                Violation(
                    "same-pbx-address",
                    f"address {address}",
                    f"customers {', '.join(customers)} name the same PBX address "
                    f"({PBX_ADDRESS_VARIABLE})",
                )
            )


def build_plan(
    inventory: Inventory, frontend_id: str, settings: FrontendPlanSettings
) -> FrontendPlan:
    """The plan of one Frontend with every violation named. UnknownFrontend if it is not in the
    inventory."""
    frontend = next((f for f in inventory.frontends if f.id == frontend_id), None)
    if frontend is None:
        raise UnknownFrontend(frontend_id)
    variables = LayeredVariables(inventory.variables)
    violations: list[Violation] = []
    customers = [c for c in inventory.customers if c.frontend == frontend.id]
    plans = [
        _customer_plan(c, variables.values(customer_scopes(c.id, c.frontend)), settings, violations)
        for c in customers
    ]
    frontend_variables = variables.values(frontend_scopes(frontend.id))
    shared = _shared_maps(settings, frontend_variables, violations)
    frontend_mac = None
    if raw_mac := frontend_variables.get(FRONTEND_MAC_VARIABLE):
        try:
            frontend_mac = normalize_mac(raw_mac)
        except IdentityError as error:
            violations.append(
                Violation(
                    "frontend-mac",
                    f"frontend {frontend.id}",
                    f"update variable {FRONTEND_MAC_VARIABLE}: {error}",
                )
            )
    # The Frontend gateway itself may be in the inventory (for its backups); it is no CPE.
    cpe = [d for d in inventory.devices if d.mac != frontend_mac]
    borders = _session_borders(customers, cpe, {p.id: p.pbx_address for p in plans}, violations)
    ras_port_alt = _ras_port_alt(customers, inventory.devices, variables, frontend, violations)
    all_maps = [m for p in plans for m in p.maps] + shared
    _clashes(all_maps, violations)
    _same_addresses(plans, violations)

    subject = f"frontend {frontend.id}"
    # Two maps per customer whether or not they could be planned: the budget is what the
    # customers need.
    maps_used = 2 * len(customers) + len(shared)
    budget = Budget(
        maps_used,
        settings.max_maps,
        len(shared),
        settings.shared_reserve,
        len(customers),
        settings.max_customers,
    )
    if len(customers) > settings.max_customers:
        violations.append(
            Violation(
                "too-many-customers",
                subject,
                f"{len(customers)} customers, the limit is {settings.max_customers} "
                "(frontend_plan.max_customers; seed: about 135 per Frontend)",
            )
        )
    if maps_used > settings.max_maps:
        violations.append(
            Violation(
                "too-many-maps",
                subject,
                f"{maps_used} NAT maps, the limit is {settings.max_maps} "
                "(frontend_plan.max_maps; seed: about 290 per Frontend)",
            )
        )
    if len(shared) > settings.shared_reserve:
        violations.append(
            Violation(
                "too-many-shared-maps",
                subject,
                f"{len(shared)} shared maps, {settings.shared_reserve} are reserved "
                "(frontend_plan.shared_reserve)",
            )
        )

    udp_size = settings.udp_nat_size or settings.max_customers
    udp_first = settings.udp_nat_first
    udp_last = udp_first + udp_size - 1
    if udp_size < len(customers):
        violations.append(
            Violation(
                "udp-nat-too-small",
                subject,
                f"the UDP NAT range has {udp_size} ports for {len(customers)} customer PBXs "
                "(one per SIP trunk; frontend_plan.udp_nat_size)",
            )
        )
    if udp_last > 65535:
        violations.append(
            Violation(
                "udp-nat-range",
                subject,
                f"the UDP NAT range {udp_first}-{udp_last} ends above 65535",
            )
        )
    if udp_first <= settings.rtp_last and settings.rtp_first <= udp_last:
        violations.append(
            Violation(
                "udp-nat-overlaps-rtp",
                subject,
                f"the UDP NAT range {udp_first}-{udp_last} overlaps the UDP-RTP range "
                f"{settings.rtp_first}-{settings.rtp_last}",
            )
        )
    for nat in all_maps:
        if nat.protocol == "udp" and (
            udp_first <= nat.external_port <= udp_last
            or settings.rtp_first <= nat.external_port <= settings.rtp_last
        ):
            violations.append(
                Violation(
                    "udp-map-in-range",
                    f"udp port {nat.external_port}",
                    f"the {nat.service} map lies in the UDP NAT or RTP port range",
                )
            )
    directory = None
    if settings.directory_map:
        directory = next((m for m in shared if m.service == settings.directory_map), None)
        if directory is None:
            violations.append(
                Violation(
                    "directory-map",
                    subject,
                    f"frontend_plan.directory_map names {settings.directory_map!r}, which is not "
                    "a shared map",
                )
            )
    return FrontendPlan(
        frontend=frontend,
        customers=tuple(plans),
        shared_maps=tuple(shared),
        session_borders=tuple(borders),
        udp_nat_first=udp_first,
        udp_nat_last=udp_last,
        rtp_first=settings.rtp_first,
        rtp_last=settings.rtp_last,
        ras_port_alt=ras_port_alt,
        budget=budget,
        violations=tuple(violations),
        frontend_mac=frontend_mac,
        directory_map=directory,
    )


# --- rendering ---------------------------------------------------------------------------------


def _password(border: SessionBorder, show_secrets: bool) -> str | None:
    if border.password is None:
        return None
    return border.password if show_secrets else MASK


def _map_json(nat: NatMap) -> dict[str, object]:
    return {
        "protocol": nat.protocol,
        "external_port": nat.external_port,
        "address": nat.address,
        "internal_port": nat.internal_port,
        "service": nat.service,
        "customer": nat.customer,
        "source": nat.source,
    }


def plan_json(plan: FrontendPlan, *, show_secrets: bool = False) -> dict[str, object]:
    frontend = plan.frontend
    return {
        "frontend": {
            "id": frontend.id,
            "public_address": frontend.public_address,
            "internal_address": frontend.internal_address,
            "index": frontend.index,
        },
        "nat_maps": [_map_json(m) for m in plan.maps],
        "customers": [
            {
                "id": c.id,
                "pbx_address": c.pbx_address,
                "registration_password_set": c.registration_password_set,
                "nat_maps": {m.service: m.external_port for m in c.maps},
            }
            for c in plan.customers
        ],
        "session_borders": [
            {
                "customer": b.customer,
                "mac": b.mac,
                "long_name": b.long_name,
                "internal_name": b.internal_name,
                "external_name": b.external_name,
                "internal_pbx": b.internal_pbx,
                "password": _password(b, show_secrets),
                "password_set": b.password is not None,
                "pbx_password": b.pbx_password,
            }
            for b in plan.session_borders
        ],
        "udp_nat": {"first": plan.udp_nat_first, "last": plan.udp_nat_last},
        "rtp": {"first": plan.rtp_first, "last": plan.rtp_last},
        "ras_port_alt": plan.ras_port_alt,
        "budget": {
            "maps": {"used": plan.budget.maps_used, "limit": plan.budget.maps_limit},
            "shared_maps": {"used": plan.budget.shared_maps, "limit": plan.budget.shared_reserve},
            "customers": {"used": plan.budget.customers, "limit": plan.budget.customers_limit},
        },
        "violations": [
            {"code": v.code, "subject": v.subject, "message": v.message} for v in plan.violations
        ],
    }


CSV_COLUMNS = (
    "kind",
    "customer",
    "name",
    "protocol",
    "external_port",
    "address",
    "internal_port",
    "external_name",
    "password",
    "pbx_password",
    "used",
    "limit",
)


def plan_rows(plan: FrontendPlan, *, show_secrets: bool = False) -> list[dict[str, object]]:
    """One row per NAT map, SessionBorder object, the UDP NAT range and each budget line, with
    :data:`CSV_COLUMNS`: kind nat | sessionborder | udp-nat | budget | violation."""
    rows: list[dict[str, object]] = []
    for nat in plan.maps:
        rows.append(
            {
                "kind": "nat",
                "customer": nat.customer or "",
                "name": nat.service,
                "protocol": nat.protocol,
                "external_port": nat.external_port,
                "address": nat.address,
                "internal_port": nat.internal_port,
            }
        )
    for border in plan.session_borders:
        rows.append(
            {
                "kind": "sessionborder",
                "customer": border.customer,
                "name": border.long_name,
                "address": border.internal_pbx or "",
                "external_name": border.external_name,
                "password": _password(border, show_secrets) or "",
                "pbx_password": "yes" if border.pbx_password else "no",
            }
        )
    rows.append(
        {
            "kind": "udp-nat",
            "protocol": "udp",
            "external_port": f"{plan.udp_nat_first}-{plan.udp_nat_last}",
            "used": plan.budget.customers,
            "limit": plan.udp_nat_last - plan.udp_nat_first + 1,
        }
    )
    budget = plan.budget
    for name, used, limit in (
        ("maps", budget.maps_used, budget.maps_limit),
        ("shared_maps", budget.shared_maps, budget.shared_reserve),
        ("customers", budget.customers, budget.customers_limit),
    ):
        rows.append({"kind": "budget", "name": name, "used": used, "limit": limit})
    for violation in plan.violations:
        rows.append({"kind": "violation", "name": str(violation)})
    return [{column: row.get(column, "") for column in CSV_COLUMNS} for row in rows]


def plan_text(plan: FrontendPlan, *, show_secrets: bool = False) -> str:
    frontend = plan.frontend
    lines = [
        f"Frontend {frontend.id} (public {frontend.public_address}, internal "
        f"{frontend.internal_address})",
        "",
        "NAT port maps (inbound):",
        f"  {'proto':<7}{'external':<10}{'internal':<24}{'service':<14}customer",
    ]
    for nat in plan.maps:
        target = f"{nat.address}:{nat.internal_port}"
        owner = nat.customer or "(shared)"
        note = f"  ({nat.source})" if nat.source.startswith("variable") else ""
        lines.append(
            f"  {nat.protocol:<7}{nat.external_port:<10}{target:<24}{nat.service:<14}{owner}{note}"
        )
    lines += [
        "",
        f"UDP NAT port range: {plan.udp_nat_first}-{plan.udp_nat_last} "
        f"({plan.udp_nat_last - plan.udp_nat_first + 1} ports for {plan.budget.customers} "
        f"customer PBXs; UDP-RTP {plan.rtp_first}-{plan.rtp_last})",
    ]
    if plan.ras_port_alt is not None:
        lines.append(
            f"Alternate RAS port: {plan.ras_port_alt} "
            f"(config add H323 /ras-port-alt {plan.ras_port_alt})"
        )
    else:
        lines.append("Alternate RAS port: none (no phone uses one)")
    lines += [
        "",
        "SessionBorder objects (PBX Password ticked on every one):",
        f"  {'Long Name = internal name':<28}{'external name':<20}{'password':<12}"
        f"{'internal PBX':<16}customer",
    ]
    for border in plan.session_borders:
        password = _password(border, show_secrets) or "(none)"
        lines.append(
            f"  {border.long_name:<28}{border.external_name:<20}{password:<12}"
            f"{border.internal_pbx or '-':<16}{border.customer}"
        )
    budget = plan.budget
    lines += [
        "",
        f"Budget: NAT maps {budget.maps_used} of {budget.maps_limit} (shared "
        f"{budget.shared_maps} of {budget.shared_reserve} reserved), customers "
        f"{budget.customers} of {budget.customers_limit}",
    ]
    if plan.violations:
        lines += ["", f"Violations ({len(plan.violations)}):"]
        lines += [f"  {v}" for v in plan.violations]
    return "\n".join(lines) + "\n"


def plan_csv(plan: FrontendPlan, *, show_secrets: bool = False) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(plan_rows(plan, show_secrets=show_secrets))
    return out.getvalue()
