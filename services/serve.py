"""The one place that knows every service: which application runs on which listener.

Also the embedded demo: certificates and the example inventory are created here before the
listeners start, so ``pbxfront serve --config config/demo.toml`` works on a fresh machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from services.core.config import ConfigError, ListenerSettings, Settings
from services.core.resources import Resources
from services.core.runner import ServiceFactories, StreamService

if TYPE_CHECKING:
    from services.console.state import Sources
    from services.core.inventory import Device
    from services.update.provisioning import ContextAdditions, Snapshot

log = logging.getLogger(__name__)


def service_factories() -> ServiceFactories:
    """Every service this version ships, by name. Imported lazily: a node pays only for its own."""

    def admin(settings: Settings, resources: Resources) -> web.Application:
        from services import onboard
        from services.admin.app import create_app
        from services.backup.app import create_archive_app
        from services.core.http import mount_service
        from services.frontend import api as frontend_api
        from services.redirect.app import create_api_app
        from services.update.admin_api import ENDPOINTS as update_endpoints

        app = create_app(settings, [*update_endpoints, *frontend_api.ENDPOINTS, *onboard.ENDPOINTS])
        frontend_api.install(app, settings)
        # Parts of other services that belong on the private admin listener: the redirect
        # provider API (/api/v1/redirect/) and the backup archive (/api/v1/backups/, /dav/).
        mount_service(app, create_api_app(settings))
        mount_service(app, create_archive_app(settings))
        from services.contacts.app import create_admin_app as create_contacts_admin_app

        mount_service(app, create_contacts_admin_app(settings))
        from services.events.app import create_admin_app as create_events_admin_app

        mount_service(app, create_events_admin_app(settings))
        # The operator console (/ui/), reading and acting through each service's console module.
        from services.console.app import create_app as create_console_app

        mount_service(app, create_console_app(settings, console_sources(), resources.pool))
        return app

    def backup(settings: Settings, resources: Resources) -> web.Application:
        from services.backup.app import create_app

        return create_app(settings, resources)

    def contacts(settings: Settings, resources: Resources) -> web.Application:
        from services.contacts.app import create_app

        return create_app(settings)

    def events(settings: Settings, resources: Resources) -> web.Application:
        from services.events.app import create_app

        return create_app(settings, resources)

    def redirect(settings: Settings, resources: Resources) -> web.Application:
        from services.redirect.app import create_device_app

        return create_device_app(settings)

    def update(settings: Settings, resources: Resources) -> web.Application:
        from services import onboard
        from services.update.app import create_app

        return create_app(
            settings, resources, frontend_plan_additions(settings), onboard.auto_adopt
        )

    def metrics(settings: Settings, resources: Resources) -> web.Application:
        from services.core.http import create_metrics_app

        return create_metrics_app()

    def noop(settings: Settings, resources: Resources) -> web.Application:
        from services.bench.noop import create_app

        return create_app(settings)

    def directory(settings: Settings, resources: Resources) -> StreamService:
        from services.directory.app import create_service

        return create_service(settings, resources.metrics)

    factories: dict[str, Callable[[Settings, Resources], web.Application | StreamService]] = {
        "directory": directory,
        "admin": admin,
        "update": update,
        "backup": backup,
        "events": events,
        "redirect": redirect,
        "contacts": contacts,
        "metrics": metrics,
        "noop": noop,
    }
    return factories


def frontend_plan_additions(settings: Settings) -> ContextAdditions:
    """The Frontend plan as template data (``nat``, ``config_template``, ``ldap_default``,
    ``frontend_plan``), composed here so the update service imports no other service."""
    from services.frontend.context import PlanCache, context_additions

    plans = PlanCache(settings.frontend_plan)

    def additions(
        snapshot: Snapshot, device: Device, secret: Callable[[str, str], object]
    ) -> Mapping[str, Any]:
        customer = snapshot.customers.get(device.customer)
        if customer is None:
            return {}
        plan = plans.plan(snapshot.version, snapshot.inventory, customer.frontend)
        return context_additions(plan, snapshot.inventory, device, secret)

    return additions


def console_sources() -> Sources:
    """What the console may read and do: each service's console module, composed here so the
    console package imports no service."""
    from services.backup import console as backup
    from services.console.state import Sources
    from services.contacts import console as contacts
    from services.directory import console as directory
    from services.events import console as events
    from services.update import console as update

    return Sources(
        fleet=update.FleetPages().fleet,
        fleet_sorts=update.FLEET_SORT_NAMES,
        device_types=update.device_types,
        device_status=update.device_status,
        status_history=update.status_history,
        certificate=update.certificate,
        render_script=update.render_script,
        restage=update.restage,
        certificate_reset=update.certificate_reset,
        unknown_devices=update.unknown_devices,
        adopt=update.adopt,
        firmware_store=update.firmware_store,
        firmware_builds=update.firmware_builds,
        backup_versions=backup.versions,
        backup_diff=backup.diff_sides,
        backup_overview=backup.overview,
        events=events.events,
        event_destinations=events.destinations,
        contacts_versions=contacts.versions,
        contacts_rollback=contacts.rollback,
        directory_search=directory.search,
    )


def check_services(listeners: Mapping[str, ListenerSettings], factories: ServiceFactories) -> None:
    for name, listener in listeners.items():
        for service in listener.services:
            if service not in factories:
                raise ConfigError(
                    f"listeners.{name}.services: service {service!r} is not available in this "
                    f"version (available: {', '.join(sorted(factories))})"
                )


@dataclasses.dataclass(frozen=True)
class DemoFiles:
    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    device_certificates: dict[str, tuple[Path, Path]]


def demo_device_names(settings: Settings) -> list[str]:
    from services.core.inventory import read_inventory_file

    if settings.demo.inventory is None:
        return []
    inventory = read_inventory_file(settings.demo.inventory)
    return sorted(device.hardware_id for device in inventory.devices)


def prepare_demo_pki(settings: Settings) -> DemoFiles:
    """Blocking: the demo CA, server certificate and one client certificate per example device."""
    from services.core.pki import ensure_demo_pki

    listener_hosts = {listener.host for listener in settings.listeners.values()}
    server_names = sorted(listener_hosts | {"127.0.0.1", "localhost", "::1"})
    pki = ensure_demo_pki(
        settings.data_dir / "pki",
        organization=settings.demo.organization,
        country=settings.demo.country,
        server_names=server_names,
        device_common_names=demo_device_names(settings),
    )
    return DemoFiles(
        pki.ca_certificate, pki.server_certificate, pki.server_key, pki.device_certificates
    )


def with_demo_tls(settings: Settings, demo: DemoFiles) -> Settings:
    """Fill in the demo certificate where a TLS listener names none."""
    listeners: dict[str, ListenerSettings] = {}
    for name, listener in settings.listeners.items():
        if listener.tls and listener.certificate is None:
            listener = dataclasses.replace(
                listener, certificate=demo.server_certificate, key=demo.server_key
            )
        if listener.request_client_certificate and not listener.client_ca:
            listener = dataclasses.replace(listener, client_ca=(demo.ca_certificate,))
        listeners[name] = listener
    return dataclasses.replace(settings, listeners=listeners)


async def apply_demo_inventory(settings: Settings, pool: asyncpg.Pool) -> None:
    from services.core.audit import Actor
    from services.core.inventory.apply import apply_sources, read_sources

    if settings.demo.inventory is None:
        return
    sources = await asyncio.to_thread(read_sources, settings.demo.inventory)
    async with pool.acquire() as connection:
        # Adds and updates only: what operators added through the API or other files stays.
        plan = await apply_sources(connection, sources, actor=Actor("demo inventory", "serve"))
    for line in plan.lines():
        log.info("demo inventory: %s", line)


def print_try_it(settings: Settings, addresses: Mapping[str, str], demo: DemoFiles | None) -> None:
    lines = ["pbxfront is listening:"]
    for name, url in addresses.items():
        services = ", ".join(settings.listeners[name].services)
        lines.append(f"  {name:10} {url}  ({services})")
    if demo is not None:
        admin = next(
            (url for n, url in addresses.items() if "admin" in settings.listeners[n].services), None
        )
        lines.append("")
        lines.append("Try it:")
        if admin:
            lines.append(f"  curl --cacert {demo.ca_certificate} {admin}/healthz")
        devices = next(
            (
                url
                for n, url in addresses.items()
                if settings.listeners[n].request_client_certificate
            ),
            None,
        )
        if devices and demo.device_certificates:
            cn, (cert, key) = sorted(demo.device_certificates.items())[0]
            lines.append(f"  # as device {cn}, proven by its client certificate:")
            lines.append(
                f"  curl --cacert {demo.ca_certificate} --cert {cert} --key {key} {devices}/healthz"
            )
    print("\n".join(lines), file=sys.stderr, flush=True)
