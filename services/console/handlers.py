"""Console pages and actions: parse the request, call a source, render a template.

Reading works without JavaScript (plain links and forms, server-side paging); the one vendored
script (static/console.js) only adds the live tail on the Events page.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib.metadata
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jinja2
from aiohttp import web

from services.console import security
from services.console.repository import SessionRepository, database_clients
from services.console.security import DIRECTORY, OPERATORS, require
from services.console.state import (
    COOKIE_KEY,
    DEVICE_TYPES_KEY,
    MIGRATIONS_KEY,
    PREFIX,
    SESSION_KEY,
    SETTINGS_KEY,
    SOURCES_KEY,
    STATIC_KEY,
    TEMPLATES_KEY,
    Sources,
)
from services.core import audit
from services.core.auth import Role
from services.core.db import POOL_KEY, acquire, migration_status
from services.core.http import security_event
from services.core.identity import IdentityError, normalize_mac, printable
from services.core.inventory import InventoryRepository

PHASES = ("staging", "update")
PROOFS = ("proven", "claimed", "anonymous")
CERTIFICATE_STATES = (
    "none",
    "querying",
    "requesting",
    "fetching",
    "signed",
    "installing",
    "current",
    "error",
    "refused",
)
PAGE_SIZES = (25, 50, 100, 200)
DEVICE_CLASSES = ("phone", "gateway", "pbx")


# --- rendering ---------------------------------------------------------------------------------


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


def _search_text(raw: str) -> str | None:
    text = raw.strip()[:64]
    if not text:
        return None
    # A MAC written with separators (00-90-33-01-02-03, 00:90:33:…) searches as stored.
    if re.fullmatch(r"[0-9A-Fa-f]{2}([-:.]?[0-9A-Fa-f]{2}){1,5}", text):
        text = re.sub(r"[-:.]", "", text).lower() if re.search(r"[-:.]", text) else text
    return text


def parse_fleet_query(query: Mapping[str, str], sorts: tuple[str, ...]) -> dict[str, Any]:
    """The fleet page's query string -> the update repository's FleetQuery fields; 400 naming
    the field for anything else."""
    per_page = _number(query, "per_page", 50, 1, 200)
    if per_page not in PAGE_SIZES:
        raise _bad("per_page", f"must be one of {', '.join(map(str, PAGE_SIZES))}")
    page = _number(query, "page", 1, 1, 10**6)
    customer = query.get("customer", "").strip() or None
    device_type = query.get("type", "").strip().upper() or None
    if device_type is not None and not re.fullmatch(r"[A-Z][A-Z0-9_]{0,31}", device_type):
        raise _bad("type", "a device type such as IP232")
    return {
        "search": _search_text(query.get("q", "")),
        "customer": customer[:64] if customer else None,
        "device_type": device_type,
        "phase": _choice(query, "phase", PHASES),
        "proof": _choice(query, "proof", PROOFS),
        "in_sync": _yes_no(query, "in_sync"),
        "stale": _yes_no(query, "stale"),
        "certificate": _choice(query, "certificate", CERTIFICATE_STATES),
        "sort": _choice(query, "sort", sorts) or "customer",
        "descending": _choice(query, "order", ("asc", "desc")) == "desc",
        "limit": per_page,
        "offset": (page - 1) * per_page,
    }


# --- login -------------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    token = security.new_login_token()
    target = security.safe_next(request.query.get("next"))
    response = render(request, "login.html", next=target, error="", login_csrf=token)
    security.set_login_cookie(response, token)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    target = security.safe_next(str(form.get("next", "")))
    try:
        token, _name = await security.check_login(request)
    except security.LoginRefused as refused:
        form_token = security.new_login_token()
        response = render(
            request,
            "login.html",
            http_status=refused.status,
            next=target,
            error=str(refused),
            login_csrf=form_token,
        )
        if refused.retry_after:
            response.headers["Retry-After"] = str(refused.retry_after)
        security.set_login_cookie(response, form_token)
        return response
    response = see_other(target)
    security.start_session(response, token)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = see_other(f"{PREFIX}/login")
    await security.end_session(request, response)
    return response


async def home(request: web.Request) -> web.StreamResponse:
    account = request[SESSION_KEY].account
    if account.has_any(OPERATORS):
        raise web.HTTPSeeOther(f"{PREFIX}/fleet")
    raise web.HTTPSeeOther(f"{PREFIX}/directory")


async def static(request: web.Request) -> web.Response:
    found = request.app[STATIC_KEY].get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound(text="no such file\n")
    content, content_type = found
    return web.Response(
        body=content, content_type=content_type, headers={"Cache-Control": "max-age=3600"}
    )


# --- fleet -------------------------------------------------------------------------------------


def _link(query: Mapping[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**query, **changes}.items() if v not in (None, "")}
    return "?" + urlencode(merged)


async def fleet(request: web.Request) -> web.Response:
    sources = _sources(request)
    filters = parse_fleet_query(request.query, sources.fleet_sorts)
    settings = request.app[SETTINGS_KEY]
    rows, total = await sources.fleet(_pool(request), settings, filters)
    types = await _device_types(request)
    unknown = await sources.unknown_devices(_pool(request), 20)
    per_page = filters["limit"]
    page = filters["offset"] // per_page + 1
    pages = max(1, (total + per_page - 1) // per_page)
    query = {k: v for k, v in request.query.items() if k != "page"}
    return render(
        request,
        "fleet.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        per_page=per_page,
        query=request.query,
        filters=filters,
        link=lambda **changes: _link(query, **changes),
        sort_link=lambda column: _link(
            query,
            sort=column,
            order="desc" if filters["sort"] == column and not filters["descending"] else "asc",
        ),
        sorts=sources.fleet_sorts,
        types=types,
        phases=PHASES,
        proofs=PROOFS,
        certificate_states=CERTIFICATE_STATES,
        page_sizes=PAGE_SIZES,
        unknown=unknown,
        device_classes=DEVICE_CLASSES,
    )


async def _device_types(request: web.Request) -> list[str]:
    remembered = request.app[DEVICE_TYPES_KEY]
    now = time.monotonic()
    if remembered.expires < now:
        remembered.value = await _sources(request).device_types(_pool(request))
        remembered.expires = now + remembered.ttl
    types: list[str] = remembered.value
    return types


async def adopt(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    try:
        mac = normalize_mac(str(form.get("mac", "")))
    except IdentityError as error:
        raise _bad("mac", str(error)) from None
    customer = str(form.get("customer", "")).strip()
    if not customer:
        raise _bad("customer", "required")
    device_class = str(form.get("device_class", ""))
    if device_class not in DEVICE_CLASSES:
        raise _bad("device_class", f"must be one of {', '.join(DEVICE_CLASSES)}")
    device_type = str(form.get("type", "")).strip().upper() or None

    async def run(connection: asyncpg.Connection) -> Audited:
        created, problem = await _sources(request).adopt(
            connection, mac, customer, device_class, device_type
        )
        if problem is not None:
            raise web.HTTPUnprocessableEntity(text=f"{problem}\n")
        return None, created

    await _audited(request, "adopt", "device", mac, run)
    raise web.HTTPSeeOther(f"{PREFIX}/devices/{mac}?done=adopted")


# --- device ------------------------------------------------------------------------------------


def _redact(text: str, secret_values: list[str]) -> str:
    for value in sorted(set(secret_values), key=len, reverse=True):
        if len(value) >= 3:
            text = text.replace(value, "********")
    return text


def _wants_secrets(request: web.Request) -> bool:
    """show_secrets=1 from an admin (then logged); 403 for anyone else."""
    if request.query.get("show_secrets") != "1":
        return False
    account = request[SESSION_KEY].account
    if Role.ADMIN not in account.roles:
        security_event(request, "forbidden", account=account.name, path=request.path)
        raise web.HTTPForbidden(text="show_secrets needs the admin role\n")
    return True


async def device(request: web.Request) -> web.Response:
    mac = _mac(request)
    sources = _sources(request)
    pool = _pool(request)
    settings = request.app[SETTINGS_KEY]
    status = await sources.device_status(pool, settings, mac)
    if status is None:
        raise web.HTTPNotFound(text=f"no device {mac} in the inventory\n")
    phase = _choice(request.query, "phase", PHASES) or "update"
    show = _wants_secrets(request)
    script = await sources.render_script(pool, settings, mac, phase)
    if show:
        security_event(
            request, "secrets-shown", account=request[SESSION_KEY].account.name, device=mac
        )
    elif script.get("text"):
        script["text"] = _redact(script["text"], script["secrets"])
    history = await sources.status_history(pool, mac, 50)
    certificate = await sources.certificate(pool, mac)
    versions = await sources.backup_versions(pool, mac, 20)
    events = await sources.events(pool, {"device": (mac, None), "limit": 20})
    async with acquire(pool) as connection:
        inventory = await InventoryRepository(connection).get_device(mac)
    return render(
        request,
        "device.html",
        mac=mac,
        status=status,
        history=history,
        device=asdict(inventory) if inventory is not None else {},
        script=script,
        phase=phase,
        show_secrets=show,
        certificate=certificate,
        versions=versions,
        events=events,
        done=request.query.get("done", ""),
    )


def side_by_side(old: list[str], new: list[str], context: int = 3) -> list[list[dict[str, Any]]]:
    """Hunks of (old line no, old text, new line no, new text, kind) rows; kind is one of
    same, changed, removed, added."""
    hunks: list[list[dict[str, Any]]] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        rows: list[dict[str, Any]] = []
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                for offset in range(i2 - i1):
                    rows.append(
                        {
                            "kind": "same",
                            "old_no": i1 + offset + 1,
                            "old": old[i1 + offset],
                            "new_no": j1 + offset + 1,
                            "new": new[j1 + offset],
                        }
                    )
                continue
            for offset in range(max(i2 - i1, j2 - j1)):
                has_old = i1 + offset < i2
                has_new = j1 + offset < j2
                kind = "changed" if has_old and has_new else "removed" if has_old else "added"
                rows.append(
                    {
                        "kind": kind,
                        "old_no": i1 + offset + 1 if has_old else None,
                        "old": old[i1 + offset] if has_old else "",
                        "new_no": j1 + offset + 1 if has_new else None,
                        "new": new[j1 + offset] if has_new else "",
                    }
                )
        hunks.append(rows)
    return hunks


async def device_diff(request: web.Request) -> web.Response:
    mac = _mac(request)
    old_id = _number(request.query, "from", 0, 1, 2**62) or None
    new_id = _number(request.query, "to", 0, 1, 2**62) or None
    show = _wants_secrets(request)
    sides = await _sources(request).backup_diff(
        _pool(request), request.app[SETTINGS_KEY], mac, old_id, new_id, show
    )
    if sides is None:
        raise web.HTTPNotFound(text=f"no two versions to compare for {mac}\n")
    if show:
        security_event(
            request,
            "secrets-shown",
            account=request[SESSION_KEY].account.name,
            device=mac,
            versions=f"{sides['old']['id']},{sides['new']['id']}",
        )
    old_lines, new_lines = sides["old"]["lines"], sides["new"]["lines"]
    binary = old_lines is None or new_lines is None
    hunks = [] if binary else await asyncio.to_thread(side_by_side, old_lines, new_lines)
    return render(
        request,
        "diff.html",
        mac=mac,
        sides=sides,
        hunks=hunks,
        binary=binary,
        show_secrets=show,
    )


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


async def restage(request: web.Request) -> web.StreamResponse:
    mac = _mac(request)

    async def run(connection: asyncpg.Connection) -> Audited:
        if not await _sources(request).restage(connection, mac):
            raise web.HTTPNotFound(text=f"no device {mac} in the inventory\n")
        return None, {"restage_requested": True}

    await _audited(request, "restage", "device", mac, run)
    raise web.HTTPSeeOther(f"{PREFIX}/devices/{mac}?done=restage")


async def certificate_reset(request: web.Request) -> web.StreamResponse:
    mac = _mac(request)

    async def run(connection: asyncpg.Connection) -> Audited:
        rollout = await _sources(request).certificate_reset(connection, mac)
        return rollout, {"certificate_rollout": None}

    before, _after = await _audited(request, "certificate-reset", "device", mac, run)
    done = "certificate-reset" if before is not None else "certificate-none"
    raise web.HTTPSeeOther(f"{PREFIX}/devices/{mac}?done={done}")


# --- customers, directory ----------------------------------------------------------------------


async def customers(request: web.Request) -> web.Response:
    async with acquire(_pool(request)) as connection:
        found = await InventoryRepository(connection).list_customers()
    return render(request, "customers.html", customers=[asdict(c) for c in found])


async def customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    pool = _pool(request)
    async with acquire(pool) as connection:
        found = await InventoryRepository(connection).get_customer(customer_id)
    if found is None:
        raise web.HTTPNotFound(text=f"no customer {printable(customer_id, 64)}\n")
    rows, total = await _sources(request).fleet(
        pool,
        request.app[SETTINGS_KEY],
        {"customer": found.id, "limit": 200, "offset": 0},
    )
    versions = await _sources(request).contacts_versions(pool, found.id)
    data = asdict(found)
    for secret in ("registration_password", "login_password"):
        data[secret] = data[secret] is not None
    return render(
        request,
        "customer.html",
        customer=data,
        devices=rows,
        total=total,
        versions=versions,
        done=request.query.get("done", ""),
    )


async def contacts_rollback(request: web.Request) -> web.StreamResponse:
    customer_id = request.match_info["customer_id"]
    form = await request.post()
    raw = str(form.get("version", ""))
    if not re.fullmatch(r"\d{1,9}", raw):
        raise _bad("version", "must be a whole number")
    version = int(raw)

    async def run(connection: asyncpg.Connection) -> Audited:
        previous, problem = await _sources(request).contacts_rollback(
            connection, customer_id, version
        )
        if problem is not None:
            status, why = problem
            if status == 404:
                raise web.HTTPNotFound(text=f"{why}\n")
            raise web.HTTPConflict(text=f"{why}\n")
        return {"contacts_version": previous}, {"contacts_version": version}

    await _audited(request, "contacts-rollback", "customer", customer_id, run)
    raise web.HTTPSeeOther(f"{PREFIX}/customers/{customer_id}?done=rollback")


async def directory(request: web.Request) -> web.Response:
    search = _sources(request).directory_search
    customer_id = request.query.get("customer", "").strip()[:64]
    text = request.query.get("q", "").strip()[:64]
    results: list[dict[str, Any]] | None = None
    error = ""
    if search is not None and customer_id and text:
        found = await search(_pool(request), request.app[SETTINGS_KEY], customer_id, text)
        if found is None:
            error = f"no customer {customer_id}"
        else:
            results = found
    async with acquire(_pool(request)) as connection:
        known = await InventoryRepository(connection).list_customers()
    return render(
        request,
        "directory.html",
        available=search is not None,
        customers=[c.id for c in known],
        customer_id=customer_id,
        text=text,
        results=results,
        error=error,
    )


# --- events ------------------------------------------------------------------------------------


def _event_filters(query: Mapping[str, str]) -> dict[str, Any]:
    filters: dict[str, Any] = {"limit": _number(query, "limit", 100, 1, 1000)}
    customer = query.get("customer", "").strip()
    if customer:
        filters["customer"] = customer[:64]
    device_raw = query.get("device", "").strip()
    if device_raw:
        try:
            filters["device"] = (normalize_mac(device_raw), None)
        except IdentityError:
            filters["device"] = (None, device_raw[:32])
    severity = query.get("severity", "")
    if severity:
        filters["max_severity"] = _number(query, "severity", 7, 0, 7)
    if query.get("active") == "1":
        filters["active"] = True
    return filters


async def events(request: web.Request) -> web.Response:
    filters = _event_filters(request.query)
    found = await _sources(request).events(_pool(request), filters)
    alarms = await _sources(request).events(_pool(request), {"active": True, "limit": 100})
    newest = max((e["id"] for e in found), default=0)
    return render(
        request,
        "events.html",
        events=found,
        alarms=alarms,
        query=request.query,
        newest=newest,
        stream=f"{PREFIX}/events/stream?"
        + urlencode(
            {k: v for k, v in request.query.items() if k in ("customer", "device", "severity")}
        ),
    )


async def events_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every new event matching the filters, as JSON, until the client
    goes or the session ends."""
    filters = _event_filters(request.query)
    filters["limit"] = 200
    last = request.headers.get("Last-Event-ID", "") or request.query.get("after", "")
    after = int(last) if re.fullmatch(r"\d{1,18}", last) else None
    pool = _pool(request)
    sources = _sources(request)
    if after is None:
        newest = await sources.events(pool, {**filters, "limit": 1})
        after = newest[0]["id"] if newest else 0
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    await response.write(b"retry: 3000\n\n")
    idle = request.app[SETTINGS_KEY].admin.console_idle_timeout
    waited = 0.0
    while waited < idle:
        found = await sources.events(pool, {**filters, "after": after})
        for event in found:
            after = max(after, event["id"])
            payload = json.dumps(
                {
                    key: event.get(key)
                    for key in (
                        "id",
                        "received_at",
                        "kind",
                        "severity",
                        "device_hardware_id",
                        "customer",
                        "code",
                        "text",
                        "active",
                    )
                },
                default=str,
            )
            await response.write(f"id: {event['id']}\ndata: {payload}\n\n".encode())
        if not found:
            await response.write(b": keep-alive\n\n")
        await asyncio.sleep(1.0)
        waited += 1.0
        # A logout (or an expiry, or an account change) ends the stream too.
        if waited % 15 == 0:
            async with acquire(pool) as connection:
                if await SessionRepository(connection).use(request[COOKIE_KEY], idle) is None:
                    break
    return response


# --- backups, firmware, system -----------------------------------------------------------------


async def backups(request: web.Request) -> web.Response:
    overview = await _sources(request).backup_overview(_pool(request), request.app[SETTINGS_KEY])
    return render(request, "backups.html", **overview)


async def firmware(request: web.Request) -> web.Response:
    store = await _sources(request).firmware_store(request.app[SETTINGS_KEY], _pool(request))
    builds = await _sources(request).firmware_builds(_pool(request))
    return render(request, "firmware.html", store=store, builds=builds)


def _version() -> str:
    try:
        return importlib.metadata.version("pbxfront")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def system(request: web.Request) -> web.Response:
    pool = _pool(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(pool) as connection:
        frontends = await InventoryRepository(connection).list_frontends()
        migrations = await migration_status(connection, request.app[MIGRATIONS_KEY])
        server_version = await connection.fetchval("SHOW server_version")
        clients = await database_clients(connection)
    destinations = await _sources(request).event_destinations(pool)
    return render(
        request,
        "system.html",
        frontends=[asdict(f) for f in frontends],
        this_frontend=settings.frontend,
        clients=[asdict(c) for c in clients],
        migrations=migrations,
        destinations=destinations,
        version=_version(),
        postgres=server_version,
        listeners={
            name: {"host": listener.host, "port": listener.port, "services": listener.services}
            for name, listener in settings.listeners.items()
        },
    )


def add_routes(app: web.Application, prefix: str) -> None:
    router = app.router
    router.add_get(f"{prefix}/static/{{name}}", static)
    router.add_get(f"{prefix}/login", login_page)
    router.add_post(f"{prefix}/login", login)
    router.add_post(f"{prefix}/logout", logout)
    router.add_get(f"{prefix}/", home)
    router.add_get(f"{prefix}/fleet", require(OPERATORS, fleet))
    router.add_post(f"{prefix}/fleet/adopt", require(OPERATORS, adopt))
    router.add_get(f"{prefix}/devices/{{mac}}", require(OPERATORS, device))
    router.add_get(f"{prefix}/devices/{{mac}}/diff", require(OPERATORS, device_diff))
    router.add_post(f"{prefix}/devices/{{mac}}/restage", require(OPERATORS, restage))
    router.add_post(
        f"{prefix}/devices/{{mac}}/certificate-reset", require(OPERATORS, certificate_reset)
    )
    router.add_get(f"{prefix}/customers", require(OPERATORS, customers))
    router.add_get(f"{prefix}/customers/{{customer_id}}", require(OPERATORS, customer))
    router.add_post(
        f"{prefix}/customers/{{customer_id}}/rollback", require(OPERATORS, contacts_rollback)
    )
    router.add_get(f"{prefix}/directory", require(DIRECTORY, directory))
    router.add_get(f"{prefix}/events", require(OPERATORS, events))
    router.add_get(f"{prefix}/events/stream", require(OPERATORS, events_stream))
    router.add_get(f"{prefix}/backups", require(OPERATORS, backups))
    router.add_get(f"{prefix}/firmware", require(OPERATORS, firmware))
    router.add_get(f"{prefix}/system", require(OPERATORS, system))
