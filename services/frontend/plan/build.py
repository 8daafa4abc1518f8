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
    """One customer's NAT maps. A customer without a PBX address, or with one the port scheme
    cannot encode, gets none; its violations are appended (password, address, then ports)."""
    subject = f"customer {customer.id}"
    has_password = bool(customer.registration_password)
    if not has_password:
        violations.append(
            Violation(
                "no-registration-password",
                subject,
                "no registration password: its SessionBorder objects would have none, and the "
                "Frontend never allows registrations without password (seed: Security)",
            )
        )
    address = variables.get(PBX_ADDRESS_VARIABLE)
    if not address:
        violations.append(
            Violation(
                "no-pbx-address",
                subject,
                f"update variable {PBX_ADDRESS_VARIABLE} (the customer PBX's internal address) is "
                "not set: no NAT maps",
            )
        )
        return CustomerPlan(customer.id, None, has_password, ())
    if not _is_ip_address(address):
        violations.append(
            Violation(
                "unencodable-address",
                subject,
                f"{PBX_ADDRESS_VARIABLE} = {address!r} is not an IP address: the port scheme "
                "encodes the last octet of an IPv4 address",
            )
        )
        return CustomerPlan(customer.id, address, has_password, ())
    maps = _customer_maps(customer.id, address, variables, settings, violations)
    return CustomerPlan(customer.id, address, has_password, maps)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _customer_maps(
    customer_id: str,
    address: str,
    variables: Mapping[str, str],
    settings: FrontendPlanSettings,
    violations: list[Violation],
) -> tuple[NatMap, ...]:
    """The customer's https and ldaps maps to ``address``; a service whose external port is
    unusable is left out (its violation appended)."""
    subject = f"customer {customer_id}"
    maps: list[NatMap] = []
    for service, digit, internal_port, variable in (
        ("https", settings.https_digit, settings.https_port, HTTPS_PORT_VARIABLE),
        ("ldaps", settings.ldaps_digit, settings.ldaps_port, LDAPS_PORT_VARIABLE),
    ):
        external = _external_port(subject, address, digit, variable, variables, violations)
        if external is not None:
            port, source = external
            maps.append(NatMap("tcp", port, address, internal_port, service, customer_id, source))
    return tuple(maps)


def _external_port(
    subject: str,
    address: str,
    digit: int,
    variable: str,
    variables: Mapping[str, str],
    violations: list[Violation],
) -> tuple[int, str] | None:
    """The external port and where it came from: the update variable ``variable`` when set,
    otherwise the port scheme. None (a violation appended) when neither gives a port."""
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
            return None
        return external, f"variable {variable}"
    try:
        return scheme_port(digit, address), "scheme"
    except ValueError as error:
        violations.append(
            Violation("unencodable-address", subject, f"{PBX_ADDRESS_VARIABLE}: {error}")
        )
        return None


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
    frontend_mac = _frontend_mac(frontend, frontend_variables, violations)
    # The Frontend gateway itself may be in the inventory (for its backups); it is no CPE.
    cpe = [d for d in inventory.devices if d.mac != frontend_mac]
    borders = _session_borders(customers, cpe, {p.id: p.pbx_address for p in plans}, violations)
    ras_port_alt = _ras_port_alt(customers, inventory.devices, variables, frontend, violations)
    all_maps = [m for p in plans for m in p.maps] + shared
    _clashes(all_maps, violations)
    _same_addresses(plans, violations)
    subject = f"frontend {frontend.id}"
    budget = _budget(subject, len(customers), len(shared), settings, violations)
    udp_first, udp_last = _udp_nat_range(subject, len(customers), settings, violations)
    _udp_maps_in_ranges(all_maps, udp_first, udp_last, settings, violations)
    directory = _directory_map(subject, shared, settings, violations)
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


def _frontend_mac(
    frontend: Frontend, variables: Mapping[str, str], violations: list[Violation]
) -> str | None:
    """The Frontend gateway's own MAC (update variable FRONTEND_MAC_VARIABLE), normalised; None
    when it is not set or not a MAC (a violation then)."""
    raw_mac = variables.get(FRONTEND_MAC_VARIABLE)
    if not raw_mac:
        return None
    try:
        return normalize_mac(raw_mac)
    except IdentityError as error:
        violations.append(
            Violation(
                "frontend-mac",
                f"frontend {frontend.id}",
                f"update variable {FRONTEND_MAC_VARIABLE}: {error}",
            )
        )
        return None


def _budget(
    subject: str,
    customers: int,
    shared: int,
    settings: FrontendPlanSettings,
    violations: list[Violation],
) -> Budget:
    """The Frontend's customers and NAT maps against its limits, each limit passed a violation."""
    # Two maps per customer whether or not they could be planned: the budget is what the
    # customers need.
    maps_used = 2 * customers + shared
    if customers > settings.max_customers:
        violations.append(
            Violation(
                "too-many-customers",
                subject,
                f"{customers} customers, the limit is {settings.max_customers} "
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
    if shared > settings.shared_reserve:
        violations.append(
            Violation(
                "too-many-shared-maps",
                subject,
                f"{shared} shared maps, {settings.shared_reserve} are reserved "
                "(frontend_plan.shared_reserve)",
            )
        )
    return Budget(
        maps_used,
        settings.max_maps,
        shared,
        settings.shared_reserve,
        customers,
        settings.max_customers,
    )


def _udp_nat_range(
    subject: str, customers: int, settings: FrontendPlanSettings, violations: list[Violation]
) -> tuple[int, int]:
    """The UDP NAT range (first, last): one port per customer PBX unless
    ``frontend_plan.udp_nat_size`` says otherwise; too small, past 65535 or overlapping the RTP
    range are violations."""
    udp_size = settings.udp_nat_size or settings.max_customers
    udp_first = settings.udp_nat_first
    udp_last = udp_first + udp_size - 1
    if udp_size < customers:
        violations.append(
            Violation(
                "udp-nat-too-small",
                subject,
                f"the UDP NAT range has {udp_size} ports for {customers} customer PBXs "
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
    return udp_first, udp_last


def _udp_maps_in_ranges(
    maps: Sequence[NatMap],
    udp_first: int,
    udp_last: int,
    settings: FrontendPlanSettings,
    violations: list[Violation],
) -> None:
    for nat in maps:
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


def _directory_map(
    subject: str,
    shared: Sequence[NatMap],
    settings: FrontendPlanSettings,
    violations: list[Violation],
) -> NatMap | None:
    """The shared map ``frontend_plan.directory_map`` names (None when it names none; a
    violation when it names one that does not exist)."""
    if not settings.directory_map:
        return None
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
    return directory
