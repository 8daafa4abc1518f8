"""What every listener shares: error mapping, limits, request ids, access log, metrics, mounting.

One middleware chain per listener application:
request id -> metrics -> limits/timeout -> error mapping -> the service's handler.
Domain errors (``core.errors`` and a few core exceptions) are mapped to a status and a short
text/plain body (JSON on ``/api/``), so handlers never build error responses themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_urldispatcher import AbstractRuleMatching, MatchedSubAppResource, MatchInfoError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.core import errors
from services.core.config import LimitSettings
from services.core.db import DatabaseUnavailable
from services.core.identity import IdentityConflict, IdentityError, printable
from services.core.inputs import text_problem

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import _InfoDict

log = logging.getLogger(__name__)
security_log = logging.getLogger("pbxfront.security")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_KEY = web.RequestKey("request_id", str)
SERVICE_NAME_KEY = web.AppKey("service_name", str)
LIMITS_KEY = web.AppKey("limits", LimitSettings)
# Set on a service application whose callers read every answer line as a command (devices):
# error bodies are then written as `#` comment lines.
COMMENT_ERRORS_KEY = web.AppKey("comment_errors", bool)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIdFilter(logging.Filter):
    """Adds ``%(request_id)s`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class Metrics:
    """Per-process Prometheus collectors, kept on the application (no module globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pbxfront_http_requests",
            "HTTP requests answered",
            ["service", "route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pbxfront_http_request_duration_seconds",
            "Time from request start to response",
            ["service", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self._shared: dict[str, Any] = {}

    def shared(self, key: str, build: Callable[[CollectorRegistry], Any]) -> Any:
        """The one object ``build`` made for ``key`` on this registry: a service mounted on
        several listeners of a node registers its collectors once and shares them."""
        if key not in self._shared:
            self._shared[key] = build(self.registry)
        return self._shared[key]

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("metrics", Metrics)


def _status_for(error: BaseException) -> int | None:
    if isinstance(error, errors.Invalid | IdentityError):
        return 400
    if isinstance(error, errors.Unauthenticated):
        return 401
    if isinstance(error, errors.Forbidden | IdentityConflict):
        return 403
    if isinstance(error, errors.NotFound):
        return 404
    if isinstance(error, errors.Conflict):
        return 409
    if isinstance(error, errors.TooLarge):
        return 413
    if isinstance(error, errors.Unprocessable):
        return 422
    if isinstance(error, errors.TooManyRequests):
        return 429
    if isinstance(error, DatabaseUnavailable | errors.Busy):
        return 503
    return None


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.headers.get(
        "Accept", ""
    )


def error_response(
    request: web.Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    if any(COMMENT_ERRORS_KEY in app for app in request.match_info.apps):
        text = "".join(f"# {line}\r\n" for line in message.splitlines() or [""])
        return web.Response(status=status, text=text, content_type="text/plain", headers=headers)
    if wants_json(request):
        body = json.dumps({"error": message, "status": status}) + "\n"
        return web.Response(
            status=status, text=body, content_type="application/json", headers=headers
        )
    return web.Response(
        status=status, text=message + "\n", content_type="text/plain", headers=headers
    )


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered if _REQUEST_ID.fullmatch(offered) else secrets.token_hex(8)
    request[REQUEST_ID_KEY] = request_id
    token = request_id_var.set(request_id)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-Id"] = request_id
            raise
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        request_id_var.reset(token)


def _route_labels(request: web.Request) -> tuple[str, str]:
    match_info = request.match_info
    service = "core"
    for app in reversed(match_info.apps):
        name = app.get(SERVICE_NAME_KEY)
        if name:
            service = name
            break
    route = match_info.route
    resource = getattr(route, "resource", None)
    canonical = resource.canonical if resource is not None else "unmatched"
    return service, canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.config_dict.get(METRICS_KEY)
        if metrics is not None:
            service, route = _route_labels(request)
            metrics.requests.labels(service, route, request.method, str(status)).inc()
            metrics.latency.labels(service, route).observe(time.perf_counter() - started)


class UploadAborted(Exception):
    """The client went away before the whole body arrived."""


async def read_body(request: web.Request, limit: int, what: str = "body") -> bytes:
    """The whole body (chunked or not), streamed: at most ``limit`` bytes are ever held
    (TooLarge beyond, naming ``what``); UploadAborted when the client stops sending."""
    too_large = errors.TooLarge(f"{what} larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except (HttpProcessingError, ConnectionError, asyncio.IncompleteReadError, EOFError) as error:
        raise UploadAborted(str(error) or type(error).__name__) from error
    return b"".join(chunks)


# A service whose uploads may be larger (or must be smaller) than limits.max_body_bytes sets its
# own limit on its application; the innermost application that sets one wins.
BODY_LIMIT_KEY = web.AppKey("body_limit", int)


def body_limit(request: web.Request) -> int:
    """The body limit for this request: its service's own, else ``limits.max_body_bytes``.
    Services that stream a body (chunked has no Content-Length) enforce it while reading."""
    for app in reversed(request.match_info.apps):
        own = app.get(BODY_LIMIT_KEY)
        if own is not None:
            return own
    limits: LimitSettings = request.config_dict[LIMITS_KEY]
    return limits.max_body_bytes


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limits = request.config_dict[LIMITS_KEY]
    if len(request.query_string) > limits.max_query_bytes:
        return error_response(
            request, 414, f"query string longer than {limits.max_query_bytes} bytes"
        )
    header_bytes = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
    if header_bytes > limits.max_header_bytes:
        return error_response(
            request, 431, f"request headers larger than {limits.max_header_bytes} bytes"
        )
    max_body = body_limit(request)
    if request.content_length is not None and request.content_length > max_body:
        return error_response(request, 413, f"body larger than {max_body} bytes")
    try:
        async with asyncio.timeout(limits.request_timeout):
            return await handler(request)
    except TimeoutError:
        log.warning(
            "request timed out after %.1f s: %s %s",
            limits.request_timeout,
            request.method,
            printable(request.path),
        )
        return error_response(request, 408, "request took too long")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.config_dict[LIMITS_KEY].max_body_bytes
        return error_response(request, 413, f"body larger than {limit} bytes")
    except web.HTTPException as exc:
        if (
            exc.status >= 400
            and exc.text
            and exc.content_type == "text/plain"
            and wants_json(request)
        ):
            return error_response(request, exc.status, exc.reason, headers=_passthrough(exc))
        raise
    except (errors.DomainError, IdentityError, IdentityConflict, DatabaseUnavailable) as error:
        status = _status_for(error) or 400
        message = str(error) or "request refused"
        headers: dict[str, str] = {}
        if isinstance(error, errors.Unauthenticated):
            for challenge in error.challenges:
                headers.setdefault("WWW-Authenticate", challenge)
        if isinstance(error, IdentityConflict):
            security_event(request, "identity-conflict", proven=error.proven, claimed=error.claimed)
        if isinstance(error, DatabaseUnavailable):
            log.error("database unavailable: %s", error)
            message = "service temporarily unavailable, retry later"
            headers["Retry-After"] = "5"
        if isinstance(error, errors.TooManyRequests | errors.Busy):
            headers["Retry-After"] = str(error.retry_after)
        response = error_response(request, status, message, headers=headers)
        if isinstance(error, errors.Unauthenticated) and len(error.challenges) > 1:
            for challenge in error.challenges[1:]:
                response.headers.add("WWW-Authenticate", challenge)
        return response


def _passthrough(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}


def log_address(remote: str | None) -> str:
    """The caller's address as the security log writes it: the address alone, IPv6 compressed
    and without brackets or zone (``2001:db8::1``), IPv4-mapped IPv6 as IPv4, so a fail2ban
    ``<HOST>`` (or ``<ADDR>``) matches it whole; ``-`` when unknown or not an IP address."""
    if not remote:
        return "-"
    try:
        address = ipaddress.ip_address(remote.strip("[]").split("%", 1)[0])
    except ValueError:
        return "-"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def security_event(request: web.Request, kind: str, **fields: str | None) -> None:
    """One line per security-relevant refusal, in a fixed format fail2ban can match:

    ``pbxfront security: <kind> from <address> <key>=<value> ...`` (values sanitised, the
    address alone as :func:`log_address` writes it).
    """
    parts = " ".join(
        f"{key}={printable(value or '-', 80).replace(' ', '_')}" for key, value in fields.items()
    )
    security_log.warning(
        "pbxfront security: %s from %s %s", kind, log_address(request.remote), parts
    )


def query_arguments(request: web.Request) -> dict[str, str]:
    """The query string decoded strictly as UTF-8 (first value wins); Invalid otherwise."""
    try:
        pairs = parse_qsl(
            request.query_string, keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        raise errors.Invalid("query string is not valid UTF-8") from None
    result: dict[str, str] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


class AccessLogger(AbstractAccessLogger):
    """``remote method path status bytes seconds request-id``; the query string is left out
    (it may carry device-sent text) and the path is sanitised."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %s %.4f %s",
            request.remote or "-",
            request.method,
            printable(request.path, 300),
            response.status,
            response.body_length,
            time,
            request.get(REQUEST_ID_KEY, "-"),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


async def healthz(request: web.Request) -> web.Response:
    from services.core.db import POOL_KEY, acquire

    pool = request.config_dict.get(POOL_KEY)
    if pool is None:
        return web.json_response({"status": "ok", "database": "not used"})
    try:
        async with acquire(pool, wait=2.0) as connection:
            await connection.fetchval("SELECT 1", timeout=2.0)
    except DatabaseUnavailable as error:
        log.warning("healthz: database unavailable: %s", error)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.config_dict[METRICS_KEY]
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def authenticated_metrics_handler(request: web.Request) -> web.Response:
    """``/metrics`` for an admin or operator account (``limits.metrics_auth``)."""
    from services.core.api import authenticate
    from services.core.auth import Role

    account = await authenticate(request)
    if not account.has_any(frozenset({Role.ADMIN, Role.OPERATOR})):
        security_event(request, "forbidden", account=account.name, path=request.path)
        raise errors.Forbidden("metrics need the admin or operator role")
    return await metrics_handler(request)


def create_metrics_app() -> web.Application:
    """The ``metrics`` service: ``/metrics`` without authentication, for a listener only the
    monitoring network reaches (``listeners.<name>.services = ["metrics"]``)."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    return app


# --- outside text -----------------------------------------------------------------------------


@web.middleware
async def input_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses text no handler may pass on (PostgreSQL text holds no NUL and only valid UTF-8)
    before any handler sees it: in the path, in a query name or value, in a header value.
    ``Authorization`` is left to the authenticating handler, which counts it as a failure."""
    problem = text_problem(request.path)
    if problem:
        return error_response(request, 400, f"path {problem}")
    for name, value in request.query.items():
        problem = text_problem(name) or text_problem(value)
        if problem:
            return error_response(request, 400, f"query argument {printable(name, 40)!r} {problem}")
    for name, value in request.headers.items():
        if name.lower() == "authorization":
            continue
        problem = text_problem(value)
        if problem:
            return error_response(request, 400, f"header {printable(name, 40)} {problem}")
    return await handler(request)


class ParserRefusalFilter(logging.Filter):
    """What aiohttp's HTTP parser refuses (a NUL byte in a header, a malformed request line) it
    logs at ERROR with a traceback. Such records become one security-log line without one,
    ``pbxfront security: malformed-request from <address> reason=<parser's reason>``; the
    handler's other records (a real 500 and its traceback) pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        reason = printable(getattr(error, "message", "") or type(error).__name__, 120)
        security_log.warning(
            "pbxfront security: malformed-request from %s reason=%s",
            log_address(remote if isinstance(remote, str) else None),
            reason.replace(" ", "_"),
        )
        return False


# aiohttp's request handler logs through this logger (handler_args["logger"]).
server_log = logging.getLogger("pbxfront.http.server")


class _ListenerRequest(web.Request):
    """Every answer of a listener says ``Server: pbxfront`` (aiohttp would add
    ``Python/3.x aiohttp/3.y``: no versions for strangers), including the ones aiohttp's HTTP
    parser gives itself to a malformed request, which no ``on_response_prepare`` signal sees."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers["Server"] = "pbxfront"
        await super()._prepare_hook(response)


class ServiceResource(MatchedSubAppResource):
    """Mounts a service application at the root of a listener, routes and all.

    aiohttp's sub-applications need a path prefix; pbxfront's services share prefixes
    (``/DRIVE/CF0/update/`` and ``/DRIVE/CF0/update/backup/``). This resource asks the service's
    own router and claims the request only when a route there matches (or exists with another
    method, so the listener can answer 405 with Allow).
    """

    def __init__(self, app: web.Application) -> None:
        super().__init__(_AlwaysRule(), app)

    async def resolve(self, request: web.Request) -> tuple[Any, set[str]]:
        match_info = await self._app.router.resolve(request)
        if isinstance(match_info, MatchInfoError):
            exception = match_info.http_exception
            if isinstance(exception, web.HTTPMethodNotAllowed):
                return None, set(exception.allowed_methods)
            return None, set()
        match_info.add_app(self._app)
        return match_info, set()


class _AlwaysRule(AbstractRuleMatching):
    async def match(self, request: web.Request) -> bool:
        return True

    def get_info(self) -> _InfoDict:
        return {}

    @property
    def canonical(self) -> str:
        return "service"


def mount_service(root: web.Application, service: web.Application) -> None:
    root._add_subapp(partial(ServiceResource, service), service)


def create_listener_app(
    limits: LimitSettings,
    services: Mapping[str, web.Application],
    *,
    metrics: Metrics,
    serve_metrics: bool,
) -> web.Application:
    """The root application of one listener with the given service applications mounted."""
    from services.core.authguard import AUTH_GUARD_KEY, AuthGuard

    if not any(isinstance(f, ParserRefusalFilter) for f in server_log.filters):
        server_log.addFilter(ParserRefusalFilter())

    app = web.Application(
        client_max_size=limits.max_body_bytes,
        middlewares=[
            request_id_middleware,
            metrics_middleware,
            limits_middleware,
            input_middleware,
            error_middleware,
        ],
        handler_args={
            "max_line_size": max(limits.max_query_bytes + 1024, 8190),
            "max_field_size": max(limits.max_header_bytes, 8190),
            "keepalive_timeout": limits.keepalive_timeout,
            "logger": server_log,
        },
    )
    app[LIMITS_KEY] = limits
    app[METRICS_KEY] = metrics
    # One guard per node: every listener of it shares the metrics object.
    app[AUTH_GUARD_KEY] = metrics.shared("auth_guard", partial(AuthGuard, limits))
    # aiohttp has no public hook for the request class of an application.
    app._make_request = partial(app._make_request, _cls=_ListenerRequest)  # type: ignore[method-assign]
    app.router.add_get("/healthz", healthz)
    if serve_metrics:
        app.router.add_get(
            "/metrics", authenticated_metrics_handler if limits.metrics_auth else metrics_handler
        )
    for name, service in services.items():
        service[SERVICE_NAME_KEY] = name
        mount_service(app, service)
    return app
