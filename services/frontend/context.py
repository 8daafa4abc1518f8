"""The plan as script template data (for the update service's renderer, wired by the lead).

:func:`context_additions` gives, for one device, the keys to add to its Jinja context:

- every device of a customer: ``nat`` — that customer's external port maps on its Frontend
  (``nat.https``, ``nat.ldaps``; absent when the plan could not make them);
- a customer PBX (class ``pbx``): ``config_template`` — the seed's "default Template" data
  (``loc`` with cc/ac/ntp/itp/pbx from the numbering plan, ``ldap_pbx_port``, ``directory`` with
  the Frontend's public address and the directory map's external port) and ``ldap_default``
  (the directory's internal address and port for ``config add PBX0 /ldap-default-addr …
  /ldap-default-port …``), None without ``frontend_plan.directory_map``;
- the Frontend gateway (its MAC in the Frontend variable ``frontend-mac``): ``frontend_plan`` —
  ``customers``, ``devices`` (its SessionBorder objects), ``nat_maps``, ``udp_nat``,
  ``ras_port_alt``.

Passwords go through ``secret(name, value)``: the renderer passes its own wrapper (the update
service's ``Secret``), so a registration password reaches only devices allowed to see it.
Everything else is plain data. A pure function of the inventory; cache it per inventory version
(:class:`PlanCache`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.core.config import FrontendPlanSettings
from services.core.inventory import Device, Inventory
from services.frontend.plan import FrontendPlan, build_plan

SecretWrapper = Callable[[str, str], object]


class PlanCache:
    """One plan per (inventory version, Frontend); the inventory changes rarely, polls often."""

    def __init__(self, settings: FrontendPlanSettings) -> None:
        self._settings = settings
        self._version: int | None = None
        self._plans: dict[str, FrontendPlan] = {}

    def plan(self, version: int, inventory: Inventory, frontend: str) -> FrontendPlan:
        if version != self._version:
            self._version, self._plans = version, {}
        plan = self._plans.get(frontend)
        if plan is None:
            plan = self._plans[frontend] = build_plan(inventory, frontend, self._settings)
        return plan


def context_additions(
    plan: FrontendPlan, inventory: Inventory, device: Device, secret: SecretWrapper
) -> dict[str, Any]:
    """The template keys for ``device`` (see the module docstring); ``{}`` for a device the
    plan's Frontend does not serve."""
    additions: dict[str, Any] = {}
    if device.mac == plan.frontend_mac:
        additions["frontend_plan"] = _frontend_view(plan, secret)
    customer_plan = next((c for c in plan.customers if c.id == device.customer), None)
    if customer_plan is None:
        return additions
    nat = {m.service: m.external_port for m in customer_plan.maps}
    additions["nat"] = nat
    if device.device_class == "pbx":
        customer = next(c for c in inventory.customers if c.id == device.customer)
        directory = plan.directory_map
        additions["config_template"] = {
            # Seed "default Template": <loc cc=… ac=… ntp=… itp=… pbx=…/>.
            "loc": {
                "cc": customer.country_code,
                "ac": customer.area_code,
                "ntp": customer.national_prefix,
                "itp": customer.international_prefix,
                "pbx": customer.subscriber_number or "",
            },
            # <ldap id='2' tls='1' port='…'/>: the LDAPS map to this PBX on the Frontend.
            "ldap_pbx_port": nat.get("ldaps"),
            # <ldap id='3' … addr='sb-ip-address' port='…' dn/base = PBX Name/>; pw left to the
            # customer (the seed calls it critical).
            "directory": (
                {
                    "addr": plan.frontend.public_address,
                    "port": directory.external_port,
                    "dn": customer.id,
                    "base": f"dc={customer.id}",
                }
                if directory is not None
                else None
            ),
        }
        additions["ldap_default"] = (
            {"addr": directory.address, "port": directory.internal_port}
            if directory is not None
            else None
        )
    return additions


def _frontend_view(plan: FrontendPlan, secret: SecretWrapper) -> dict[str, Any]:
    return {
        "customers": [
            {
                "id": c.id,
                "pbx_address": c.pbx_address,
                "nat": {m.service: m.external_port for m in c.maps},
            }
            for c in plan.customers
        ],
        "devices": [
            {
                **b.names(),
                "password": (
                    secret(f"sessionborder.{b.long_name}.password", b.password)
                    if b.password
                    else None
                ),
                "pbx_password": b.pbx_password,
            }
            for b in plan.session_borders
        ],
        "nat_maps": [
            {
                "protocol": m.protocol,
                "external_port": m.external_port,
                "address": m.address,
                "internal_port": m.internal_port,
                "service": m.service,
                "customer": m.customer,
            }
            for m in plan.maps
        ],
        "udp_nat": {"first": plan.udp_nat_first, "last": plan.udp_nat_last},
        "ras_port_alt": plan.ras_port_alt,
    }
