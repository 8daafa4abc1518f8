"""Who may use the console and how: sessions, login, logout, CSRF, roles, security headers.

- Login with a pbxfront account (argon2 via core.auth); failures are counted per address and per
  account name (core.ratelimit) and written to the security log; a limited login is refused
  whether or not the password is right, so guessing cannot continue at full speed.
- The session lives in PostgreSQL (repository.py); the cookie ``__Host-pbxfront_console`` is
  HttpOnly, Secure, SameSite=Strict, Path=/ (the ``__Host-`` prefix makes browsers refuse it
  otherwise). It ends on logout, at its lifetime, when idle, or when the account changes.
- Every POST carries the session's synchroniser token (``csrf`` form field), compared in constant
  time; the login form carries a double-submit token (cookie ``__Host-pbxfront_login``).
- Pages and actions name the roles they need; other accounts get 403 (logged).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from services.console.repository import SessionRepository
from services.console.state import (
    ACCOUNT_LIMITER_KEY,
    ADDRESS_LIMITER_KEY,
    COOKIE_KEY,
    PREFIX,
    SESSION_KEY,
    SETTINGS_KEY,
    VERIFIED_KEY,
)
from services.core import errors
from services.core.auth import Role, secrets_equal, verify_login
from services.core.authguard import auth_guard
from services.core.db import POOL_KEY, acquire
from services.core.http import security_event

SESSION_COOKIE = "__Host-pbxfront_console"
LOGIN_COOKIE = "__Host-pbxfront_login"
# Strict: no script (none is inline), no other host, no framing, forms only to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# Who may use the console at all; each page narrows this further.
CONSOLE_ROLES = frozenset({Role.ADMIN, Role.OPERATOR, Role.DIRECTORY_READER})
OPERATORS = frozenset({Role.ADMIN, Role.OPERATOR})
ADMINS = frozenset({Role.ADMIN})
DIRECTORY = frozenset({Role.ADMIN, Role.OPERATOR, Role.DIRECTORY_READER})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PUBLIC = (f"{PREFIX}/login", f"{PREFIX}/static/")


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _cookie(
    response: web.StreamResponse, name: str, value: str, max_age: int | None = None
) -> None:
    response.set_cookie(
        name,
        value,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
        max_age=max_age,
    )


def _login_redirect(request: web.Request) -> web.HTTPSeeOther:
    target = request.path_qs if request.method == "GET" else f"{PREFIX}/"
    return web.HTTPSeeOther(f"{PREFIX}/login?next={quote(target, safe='/')}")


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every page but the login and static files needs a live session; POSTs its CSRF token."""
    if request.path.startswith(_PUBLIC):
        return await handler(request)
    token = request.cookies.get(SESSION_COOKIE, "")
    session = None
    if token:
        idle = request.app[SETTINGS_KEY].admin.console_idle_timeout
        async with acquire(request.config_dict[POOL_KEY]) as connection:
            session = await SessionRepository(connection).use(token, idle)
    if session is None:
        if request.method != "GET":
            security_event(request, "console-no-session", path=request.path)
            raise web.HTTPForbidden(text="no console session: log in again\n")
        raise _login_redirect(request)
    request[SESSION_KEY] = session
    request[COOKIE_KEY] = token
    if request.method == "POST":
        form = await request.post()
        sent = form.get("csrf")
        if not isinstance(sent, str) or not secrets_equal(sent, session.csrf_token):
            security_event(request, "csrf-refused", account=session.account.name, path=request.path)
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page\n")
    return await handler(request)


def require(roles: frozenset[Role], handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        account = request[SESSION_KEY].account
        if not account.has_any(roles):
            security_event(request, "forbidden", account=account.name, path=request.path)
            wanted = ", ".join(sorted(r.value for r in roles))
            raise web.HTTPForbidden(text=f"this page needs one of the roles: {wanted}\n")
        return await handler(request)

    return guarded


def safe_next(value: str | None) -> str:
    """Only a path of the console itself (no other host, no scheme-relative URL)."""
    if (
        value
        and value.startswith(f"{PREFIX}/")
        and not value.startswith("//")
        and not any(c in value for c in "\\\r\n")
    ):
        return value
    return f"{PREFIX}/"


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def set_login_cookie(response: web.StreamResponse, token: str) -> None:
    """The login form's double-submit token: the form field must equal this cookie."""
    _cookie(response, LOGIN_COOKIE, token, max_age=3600)


class LoginRefused(Exception):
    """Why a login did not succeed: ``status`` and a message for the form."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


async def check_login(request: web.Request) -> tuple[str, str]:
    """Verify the posted login form: (session cookie value, account name) or LoginRefused."""
    form = await request.post()
    sent = form.get("csrf")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not isinstance(sent, str) or not expected or not secrets_equal(sent, expected):
        security_event(request, "csrf-refused", path=request.path)
        raise LoginRefused(403, "the login form expired: please try again")
    name = form.get("name")
    password = form.get("password")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise LoginRefused(400, "name: required (at most 64 characters)")
    if not isinstance(password, str) or not password or len(password) > 1024:
        raise LoginRefused(400, "password: required")
    by_address = request.app[ADDRESS_LIMITER_KEY]
    by_account = request.app[ACCOUNT_LIMITER_KEY]
    # The node's guard too (core.authguard): failures anywhere on the node count here, and a
    # console login's failures count there.
    guard = auth_guard(request)
    account_key = name.lower()
    node_refusal = guard.limiter.check(request.remote, name)
    if (
        node_refusal is not None
        or not by_address.allows(request.remote)
        or not by_account.allows(account_key)
    ):
        retry = max(
            by_address.retry_after(request.remote) if not by_address.allows(request.remote) else 0,
            by_account.retry_after(account_key) if not by_account.allows(account_key) else 0,
            node_refusal.retry_after if node_refusal is not None else 0,
        )
        security_event(request, "console-login-limited", account=name)
        raise LoginRefused(429, f"too many failed logins: try again in {retry} s", retry)
    pool = request.config_dict[POOL_KEY]
    try:
        # The argon2 check waits for its turn with every other check of the node and holds no
        # database connection meanwhile.
        account = await verify_login(pool, name, password, request.app[VERIFIED_KEY], guard.hashing)
    except errors.Busy:
        raise LoginRefused(503, "too many logins at once: try again in a moment", 1) from None
    if account is None:
        by_address.spend(request.remote)
        by_account.spend(account_key)
        guard.limiter.failed(request.remote, name)
        guard.failures.inc()
        security_event(request, "console-login-failed", account=name)
        raise LoginRefused(401, "wrong name or password")
    guard.limiter.succeeded(request.remote, account.name)
    if not account.has_any(CONSOLE_ROLES):
        security_event(request, "forbidden", account=account.name, path=request.path)
        raise LoginRefused(
            403, "this account has no console role (admin, operator, directory-reader)"
        )
    settings = request.app[SETTINGS_KEY]
    async with acquire(pool) as connection:
        token, _csrf = await SessionRepository(connection).create(
            account.name, settings.admin.console_session_lifetime, request.remote
        )
    return token, account.name


def start_session(response: web.StreamResponse, token: str) -> None:
    _cookie(response, SESSION_COOKIE, token)
    response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


async def end_session(request: web.Request, response: web.StreamResponse) -> None:
    async with acquire(request.config_dict[POOL_KEY]) as connection:
        await SessionRepository(connection).end(request[COOKIE_KEY])
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
