"""A plan as JSON, rows (CSV) and text, secrets masked unless asked for."""

from __future__ import annotations

import csv
import io

from services.frontend.plan.model import (
    MASK,
    FrontendPlan,
    NatMap,
    SessionBorder,
)


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
                **b.names(),
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
