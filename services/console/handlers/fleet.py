"""The fleet page: filters, sorting and paging of the devices; adopting an unknown device."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import asyncpg
from aiohttp import web

from services.console.handlers.common import (
    PHASES,
    Audited,
    _audited,
    _bad,
    _choice,
    _number,
    _pool,
    _sources,
    _yes_no,
    render,
)
from services.console.state import DEVICE_TYPES_KEY, PREFIX, SETTINGS_KEY
from services.core.identity import IdentityError, normalize_mac

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
