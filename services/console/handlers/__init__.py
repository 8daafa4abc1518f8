"""Console pages and actions: parse the request, call a source, render a template; one module
a page (:mod:`.fleet`, :mod:`.devices`, :mod:`.customers`, :mod:`.events`, :mod:`.system`,
:mod:`.session` for login and static files), what they share in :mod:`.common`.

Reading works without JavaScript (plain links and forms, server-side paging); the one vendored
script (static/console.js) only adds the live tail on the Events page.
"""

from __future__ import annotations

from aiohttp import web

from services.console.handlers import customers, devices, events, fleet, session, system
from services.console.handlers.common import error_pages, install_filters
from services.console.security import DIRECTORY, OPERATORS, require

__all__ = ["add_routes", "error_pages", "install_filters"]


def add_routes(app: web.Application, prefix: str) -> None:
    router = app.router
    router.add_get(f"{prefix}/static/{{name}}", session.static)
    router.add_get(f"{prefix}/login", session.login_page)
    router.add_post(f"{prefix}/login", session.login)
    router.add_post(f"{prefix}/logout", session.logout)
    router.add_get(f"{prefix}/", session.home)
    router.add_get(f"{prefix}/fleet", require(OPERATORS, fleet.fleet))
    router.add_post(f"{prefix}/fleet/adopt", require(OPERATORS, fleet.adopt))
    router.add_get(f"{prefix}/devices/{{mac}}", require(OPERATORS, devices.device))
    router.add_get(f"{prefix}/devices/{{mac}}/diff", require(OPERATORS, devices.device_diff))
    router.add_post(f"{prefix}/devices/{{mac}}/restage", require(OPERATORS, devices.restage))
    router.add_post(
        f"{prefix}/devices/{{mac}}/certificate-reset",
        require(OPERATORS, devices.certificate_reset),
    )
    router.add_get(f"{prefix}/customers", require(OPERATORS, customers.customers))
    router.add_get(f"{prefix}/customers/{{customer_id}}", require(OPERATORS, customers.customer))
    router.add_post(
        f"{prefix}/customers/{{customer_id}}/rollback",
        require(OPERATORS, customers.contacts_rollback),
    )
    router.add_get(f"{prefix}/directory", require(DIRECTORY, customers.directory))
    router.add_get(f"{prefix}/events", require(OPERATORS, events.events))
    router.add_get(f"{prefix}/events/stream", require(OPERATORS, events.events_stream))
    router.add_get(f"{prefix}/backups", require(OPERATORS, system.backups))
    router.add_get(f"{prefix}/firmware", require(OPERATORS, system.firmware))
    router.add_get(f"{prefix}/system", require(OPERATORS, system.system))
