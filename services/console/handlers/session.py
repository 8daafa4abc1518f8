"""Login, logout, the home redirect and the vendored static files."""

from __future__ import annotations

from aiohttp import web

from services.console import security
from services.console.handlers.common import render, see_other
from services.console.security import OPERATORS
from services.console.state import PREFIX, SESSION_KEY, STATIC_KEY


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
