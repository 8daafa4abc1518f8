"""What the console's pages share: template filters and rendering, the error page
middleware, query parsing (400 naming the field), the admin's show-secrets switch and
audited actions."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jinja2
from aiohttp import web

from services.console.security import DIRECTORY, OPERATORS
from services.console.state import PREFIX, SESSION_KEY, SOURCES_KEY, TEMPLATES_KEY, Sources
from services.core import audit
from services.core.auth import Role
from services.core.db import POOL_KEY, acquire
from services.core.http import security_event
from services.core.identity import IdentityError, normalize_mac

PHASES = ("staging", "update")


def _age(moment: datetime | str | None) -> str:
    if moment is None:
        return "never"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _stamp(moment: datetime | str | None) -> str:
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _mac_display(mac: str) -> str:
    return "-".join(mac[i : i + 2] for i in range(0, 12, 2))


def install_filters(environment: jinja2.Environment) -> None:
    environment.filters["age"] = _age
    environment.filters["stamp"] = _stamp
    environment.filters["macd"] = _mac_display


def render(
    request: web.Request, template: str, http_status: int = 200, **context: Any
) -> web.Response:
    session = request.get(SESSION_KEY)
    account = session.account if session is not None else None
    roles = account.roles if account is not None else frozenset()
    text = (
        request.app[TEMPLATES_KEY]
        .get_template(template)
        .render(
            account=account,
            csrf=session.csrf_token if session is not None else "",
            is_operator=bool(roles & OPERATORS),
            is_admin=Role.ADMIN in roles,
            is_directory=bool(roles & DIRECTORY),
            path=request.path,
            **context,
        )
    )
    return web.Response(text=text, status=http_status, content_type="text/html", charset="utf-8")


def see_other(location: str) -> web.Response:
    """303 to ``location`` as a response (it carries cookies; raising one would lose them)."""
    return web.Response(status=303, headers={"Location": location})


@web.middleware
async def error_pages(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refusals (400, 403, 404, 409, 422, 429) as a page with the navigation, same text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith(f"{PREFIX}/static/"):
            raise
        message = (exc.text or exc.reason).strip()
        response = render(
            request, "error.html", http_status=exc.status, code=exc.status, message=message
        )
        for name in ("Retry-After", "Allow"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response


def _sources(request: web.Request) -> Sources:
    return request.app[SOURCES_KEY]


def _pool(request: web.Request) -> Any:
    return request.config_dict[POOL_KEY]


def _bad(field: str, why: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"{field}: {why}\n")


def _mac(request: web.Request) -> str:
    try:
        return normalize_mac(request.match_info["mac"])
    except IdentityError as error:
        raise _bad("mac", str(error)) from None


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = query.get(name, "")
    if value == "":
        return None
    if value not in allowed:
        raise _bad(name, f"must be one of {', '.join(allowed)}")
    return value


def _yes_no(query: Mapping[str, str], name: str) -> bool | None:
    value = _choice(query, name, ("yes", "no"))
    return None if value is None else value == "yes"


def _number(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, "")
    if raw == "":
        return default
    if not re.fullmatch(r"\d{1,9}", raw):
        raise _bad(name, "must be a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise _bad(name, f"must be {low}..{high}")
    return value


def _wants_secrets(request: web.Request) -> bool:
    """show_secrets=1 from an admin (then logged); 403 for anyone else."""
    if request.query.get("show_secrets") != "1":
        return False
    account = request[SESSION_KEY].account
    if Role.ADMIN not in account.roles:
        security_event(request, "forbidden", account=account.name, path=request.path)
        raise web.HTTPForbidden(text="show_secrets needs the admin role\n")
    return True


# (before, after) of an action's audit row.
Audited = tuple[Any, Any]


async def _audited(
    request: web.Request,
    action: str,
    object_type: str,
    object_id: str,
    run: Callable[[asyncpg.Connection], Awaitable[Audited]],
) -> Audited:
    """One console action and its audit row in ONE transaction: both commit or neither.

    ``run`` does the action on the connection it is given (through the owning service's
    function) and returns the object before and after; a refusal it raises (an HTTP error)
    rolls the transaction back, so a refused action leaves no row. The security log gets its
    ``console-action`` line once the transaction has committed."""
    account = request[SESSION_KEY].account.name
    async with acquire(_pool(request)) as connection, connection.transaction():
        before, after = await run(connection)
        await audit.record(
            connection,
            actor=audit.Actor(f"{account} (console)", request.remote or "unknown"),
            action=f"console.{action}",
            object_type=object_type,
            object_id=object_id,
            before=before,
            after=after,
        )
    security_event(request, "console-action", account=account, action=action, target=object_id)
    return before, after
