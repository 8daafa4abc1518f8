"""Device-side credentials: the seed's shared "HTTP client" account (role ``event-sender``) sent
with HTTP Basic or Digest (RFC 7616), as the backup and events services accept them.

protocol.md §5/§6: which of the two a device sends is [NC], so both are offered on every 401
(Digest first, in the configured algorithm order, then Basic). Digest nonces are signed with the
cluster's key and their counts tracked in PostgreSQL (``core.digest``), so a nonce issued by one
node is accepted, and a replay refused, by every node.

Failures count in the node's guard (``core.authguard``), per source address and per account: an
address that guessed too often gets 429 for every credentialed request until its bucket refills,
right or wrong, so it cannot tell a hit from a miss; argon2 checks of Basic passwords wait for a
turn in the guard's hash gate.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
from aiohttp import web

from services.core import errors
from services.core.auth import (
    AccountRepository,
    Role,
    VerifiedCache,
    parse_basic,
    valid_credential_text,
    verify_login,
)
from services.core.authguard import auth_guard
from services.core.db import acquire
from services.core.digest import (
    DigestAuthenticator,
    NonceSigner,
    PostgresNonceCounter,
    load_secret,
    parse_digest,
)
from services.core.http import security_event
from services.core.senderscope import SenderScope, SenderScopeRepository

# Seconds an account's customer bindings are cached per process.
SCOPE_TTL = 5.0

BASIC_CHALLENGE = 'Basic realm="pbxfront", charset="UTF-8"'


class DeviceAuth:
    """Verifies event-sender credentials; one per service application, built with the
    application's pool. The Digest key lives in PostgreSQL: :meth:`context` (the application's
    ``cleanup_ctx``) reads it when the application starts, before any request."""

    def __init__(
        self, pool: asyncpg.Pool, algorithms: Sequence[str], nonce_lifetime: float
    ) -> None:
        self._pool = pool
        self._algorithms = tuple(algorithms)
        self._nonce_lifetime = nonce_lifetime
        self._authenticator: DigestAuthenticator | None = None
        self.basic_cache = VerifiedCache()
        self._scopes: dict[str, tuple[float, SenderScope]] = {}

    async def context(self, _app: web.Application) -> AsyncIterator[None]:
        async with acquire(self._pool) as connection:
            secret = await load_secret(connection)
        self._authenticator = DigestAuthenticator(
            NonceSigner(secret, self._nonce_lifetime), self._algorithms
        )
        yield

    @property
    def authenticator(self) -> DigestAuthenticator:
        if self._authenticator is None:
            raise RuntimeError("DeviceAuth is used before its application has started")
        return self._authenticator

    def challenges(self, *, stale: bool = False) -> tuple[str, ...]:
        return (*self.authenticator.challenges(stale=stale), BASIC_CHALLENGE)

    def unauthenticated(self, message: str) -> errors.Unauthenticated:
        """A 401 offering every challenge (raise it)."""
        return errors.Unauthenticated(message, self.challenges())

    async def authorize(
        self,
        request: web.Request,
        account: str,
        customer: str | None,
        *,
        unbound_any_customer: bool,
    ) -> None:
        """Forbidden (and a security-log line) unless ``account`` is bound to ``customer`` (the
        customer of the device it writes for; None: not in the inventory), to every customer,
        or is unbound and ``unbound_any_customer`` (admin.unbound_senders_any_customer) says
        unbound accounts keep their old reach (``core.senderscope``)."""
        scope = await self._scope(account)
        if scope.allows(customer) or (not scope.bound and unbound_any_customer):
            return
        reason = "unbound" if not scope.bound else "other-customer"
        security_event(
            request, "sender-forbidden", account=account, customer=customer, reason=reason
        )
        if not scope.bound:
            raise errors.Forbidden(
                f"account {account} is bound to no customer: "
                "an operator binds it with `pbxfront accounts bind`"
            )
        raise errors.Forbidden(f"account {account} may not write for this device's customer")

    async def _scope(self, account: str) -> SenderScope:
        """The account's bindings, cached for SCOPE_TTL seconds (a device sends often; a
        binding changes rarely and takes effect within that time on every node)."""
        now = time.monotonic()
        cached = self._scopes.get(account)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with acquire(self._pool) as connection:
            scope = await SenderScopeRepository(connection).scope(account)
        if len(self._scopes) > 10000:
            self._scopes.clear()
        self._scopes[account] = (now + SCOPE_TTL, scope)
        return scope

    async def sender_account(self, request: web.Request, header: str) -> str:
        """The event-sender account whose Basic or Digest credentials ``header`` carries;
        Unauthenticated (with fresh challenges) otherwise, TooManyRequests when the address or
        the account failed too often."""
        guard = auth_guard(request)
        digest = parse_digest(header)
        if digest is not None and not (
            valid_credential_text(digest.username)
            and all(
                valid_credential_text(part, 1024)
                for part in (digest.realm, digest.nonce, digest.uri, digest.response)
            )
        ):
            # NUL or unencodable text never goes to PostgreSQL; it is a failed attempt.
            guard.refuse_if_limited(request)
            guard.failed(request, None, "malformed Digest credentials")
            raise errors.Unauthenticated("Digest: malformed credentials", self.challenges())
        basic = parse_basic(header) if digest is None else None
        claimed = digest.username if digest is not None else basic.name if basic else None
        guard.refuse_if_limited(request, claimed)
        authenticator = self.authenticator
        if digest is not None:
            async with acquire(self._pool) as connection:
                result = await authenticator.verify(
                    digest,
                    method=request.method,
                    uri=request.raw_path,
                    lookup=AccountRepository(connection).digest_ha1,
                    counter=PostgresNonceCounter(self._pool),
                )
            if result.username is not None:
                guard.succeeded(request, result.username)
                return result.username
            reason = result.failure.value if result.failure else "refused"
            if not result.stale:
                # A stale nonce with the right response is the normal renewal, not a failure.
                guard.failed(request, result.claimed, reason)
            raise errors.Unauthenticated(f"Digest: {reason}", self.challenges(stale=result.stale))
        if basic is not None:
            account = await verify_login(
                self._pool, basic.name, basic.password, self.basic_cache, guard.hashing
            )
            if account is not None and Role.EVENT_SENDER in account.roles:
                guard.succeeded(request, account.name)
                return account.name
            guard.failed(request, basic.name, "wrong password or role")
            raise errors.Unauthenticated("wrong credentials", self.challenges())
        guard.failed(request, None, "malformed or unsupported credentials")
        raise errors.Unauthenticated("unsupported credentials", self.challenges())
