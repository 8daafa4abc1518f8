"""Building a Frontend's plan from the inventory: each customer's ports and objects, the shared
maps, and every clash named as a violation."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

from services.core.config import FrontendPlanSettings, parse_shared_map
from services.core.identity import IdentityError, normalize_mac
from services.core.inventory import Customer, Device, Frontend, Inventory
from services.core.inventory.variables import (
    LayeredVariables,
    customer_scopes,
    device_scopes,
    frontend_scopes,
)
from services.frontend.plan.model import (
    CPE_CLASSES,
    DEFAULT_RAS_PORT,
    FRONTEND_MAC_VARIABLE,
    HTTPS_PORT_VARIABLE,
    LDAPS_PORT_VARIABLE,
    PBX_ADDRESS_VARIABLE,
    RAS_PORT_VARIABLE,
    VARIABLE_REFERENCE,
    Budget,
    CustomerPlan,
    FrontendPlan,
    NatMap,
    SessionBorder,
    UnknownFrontend,
    Violation,
)


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
        reference = VARIABLE_REFERENCE.fullmatch(address)
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
