"""One guard per node for every HTTP path that checks a password, token or Digest response.

:class:`AuthGuard` joins the failure limiter (``core.ratelimit.AuthLimiter``: per address and
per account) and the bound on argon2 work (``core.auth.HashGate``). ``core.http`` puts one on
every listener application, shared by all listeners of a node (through the node's metrics
registry, which it also reports to), so a guesser gets one budget per node whichever service
it tries. Services reach it with :func:`auth_guard`.

Every handler that authenticates does the same three things: ``refuse_if_limited`` before any
check (429 with Retry-After, a ``rate-limited`` security-log line), then ``failed`` (spends a
token, logs ``auth-failed``) or ``succeeded`` (trusts the address for the account).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.core import errors
from services.core.auth import HashGate
from services.core.config import LimitSettings
from services.core.http import security_event
from services.core.ratelimit import AuthLimiter


def failure_limiter(
    limits: LimitSettings, *, address_burst: int, address_per_second: float
) -> AuthLimiter:
    """A failure limiter with the node's rule for accounts (``limits.auth_account_*``,
    ``limits.auth_trusted_seconds``) and the given budget per address."""
    return AuthLimiter(
        address_burst=address_burst,
        address_per_second=address_per_second,
        account_burst=limits.auth_account_failure_burst,
        account_per_second=limits.auth_account_failure_per_second,
        trusted_seconds=limits.auth_trusted_seconds,
    )


class AuthGuard:
    def __init__(self, limits: LimitSettings, registry: CollectorRegistry | None = None) -> None:
        self.limiter = failure_limiter(
            limits,
            address_burst=limits.auth_failure_burst,
            address_per_second=limits.auth_failure_per_second,
        )
        self.hashing = HashGate(limits.hash_concurrency, limits.hash_queue)
        registry = registry if registry is not None else CollectorRegistry()
        self.failures = Counter(
            "pbxfront_auth_failures",
            "Failed authentications (wrong, unknown or malformed credentials)",
            registry=registry,
        )
        self.refusals = Counter(
            "pbxfront_auth_rate_limited",
            "Requests refused with 429 because of earlier authentication failures",
            ["scope"],
            registry=registry,
        )
        hashes = Gauge(
            "pbxfront_password_hashes_running", "argon2 checks running now", registry=registry
        )
        hashes.set_function(lambda: self.hashing.running)
        waiting = Gauge(
            "pbxfront_password_hashes_waiting",
            "argon2 checks waiting for a turn",
            registry=registry,
        )
        waiting.set_function(lambda: self.hashing.waiting)

    def refuse_if_limited(self, request: web.Request, account: str | None = None) -> None:
        """TooManyRequests (429, Retry-After) when the address, or the account from an address
        it does not trust, failed too often; nothing otherwise."""
        refusal = self.limiter.check(request.remote, account)
        if refusal is None:
            return
        self.refusals.labels(refusal.scope).inc()
        security_event(
            request, "rate-limited", account=account, path=request.path, scope=refusal.scope
        )
        raise errors.TooManyRequests(
            "too many failed authentication attempts, retry later", refusal.retry_after
        )

    def failed(self, request: web.Request, account: str | None, reason: str | None = None) -> None:
        self.limiter.failed(request.remote, account)
        self.failures.inc()
        security_event(request, "auth-failed", account=account, path=request.path, reason=reason)

    def succeeded(self, request: web.Request, account: str) -> None:
        self.limiter.succeeded(request.remote, account)


AUTH_GUARD_KEY = web.AppKey("auth_guard", AuthGuard)


def auth_guard(request: web.Request) -> AuthGuard:
    """The node's guard (every listener application has one)."""
    guard: AuthGuard = request.config_dict[AUTH_GUARD_KEY]
    return guard
