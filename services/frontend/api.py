"""The Frontend plan on the admin API: ``GET /api/v1/frontends/{frontend_id}/plan`` and
``…/check``. Composed into the admin application by services/serve.py, which also puts the
settings under :data:`SETTINGS_KEY` (no service imports another).

Secrets never leave through the API: SessionBorder passwords are masked (``password_set`` says
whether there is one); ``pbxfront frontend plan --show-secrets`` is the only way to see them.
"""

from __future__ import annotations

from aiohttp import web

from services.core import errors
from services.core.api import OBJECT, Endpoint, int_query, json_response, pool_of
from services.core.auth import Role
from services.core.config import Settings
from services.core.db import acquire
from services.core.identity import IdentityError, normalize_mac, printable
from services.core.inventory import InventoryRepository
from services.frontend.plan import FrontendPlan, UnknownFrontend, build_plan, plan_csv, plan_json
from services.frontend.repository import FrontendRepository

SETTINGS_KEY = web.AppKey("frontend_plan_settings", Settings)
READERS = frozenset({Role.ADMIN, Role.OPERATOR})
FORMATS = ("json", "csv")


def install(app: web.Application, settings: Settings) -> None:
    """What the plan endpoints need on the application that serves them."""
    app[SETTINGS_KEY] = settings


async def _plan(request: web.Request) -> FrontendPlan:
    frontend = request.match_info["frontend_id"]
    settings = request.config_dict[SETTINGS_KEY]
    async with acquire(pool_of(request)) as connection:
        inventory = await FrontendRepository(connection).inventory()
    try:
        return build_plan(inventory, frontend, settings.frontend_plan)
    except UnknownFrontend:
        raise errors.NotFound(f"no Frontend {printable(frontend, 64)}") from None


def _format(request: web.Request) -> str:
    chosen = request.query.get("format")
    if chosen is not None:
        if chosen not in FORMATS:
            raise errors.Invalid(f"format: must be one of {', '.join(FORMATS)}")
        return chosen
    accept = request.headers.get("Accept", "")
    wants_csv = "text/csv" in accept and "application/json" not in accept
    return "csv" if wants_csv else "json"


async def get_plan(request: web.Request) -> web.Response:
    form = _format(request)
    plan = await _plan(request)
    if form == "csv":
        return web.Response(
            text=plan_csv(plan),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="plan-{plan.frontend.id}.csv"'},
        )
    return json_response(plan_json(plan))


async def get_check(request: web.Request) -> web.Response:
    plan = await _plan(request)
    violations = [
        {"code": v.code, "subject": v.subject, "message": v.message} for v in plan.violations
    ]
    return json_response(
        {"frontend": plan.frontend.id, "ok": not violations, "violations": violations}
    )


async def get_findings(request: web.Request) -> web.Response:
    frontend = request.match_info["frontend_id"]
    mac = request.query.get("device") or None
    if mac is not None:
        try:
            mac = normalize_mac(mac)
        except IdentityError as error:
            raise errors.Invalid(f"device: {error}") from None
    limit = int_query(request, "limit", 100, 1, 10000)
    async with acquire(pool_of(request)) as connection:
        repository = FrontendRepository(connection)
        if await InventoryRepository(connection).get_frontend(frontend) is None:
            raise errors.NotFound(f"no Frontend {printable(frontend, 64)}")
        findings = await repository.findings(frontend, mac, limit)
    return json_response({"frontend": frontend, "findings": [f.as_json() for f in findings]})


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/frontends/{frontend_id}/plan",
        get_plan,
        READERS,
        "The Frontend plan: NAT maps, SessionBorder objects (passwords masked), UDP NAT range, "
        "budget and violations; JSON, or CSV with ?format=csv or Accept: text/csv",
        query={"format": "json (default) or csv; else the Accept header decides"},
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/frontends/{frontend_id}/check",
        get_check,
        READERS,
        "The Frontend plan's violations, each named (ok: true when there are none)",
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        "/api/v1/frontends/{frontend_id}/findings",
        get_findings,
        READERS,
        "Recorded findings of stored backups against the plan (pbxfront frontend check "
        "--backups --record), newest first",
        query={"device": "only this MAC", "limit": "at most this many (1..10000)"},
        response=OBJECT,
    ),
]
