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

import asyncio
from collections.abc import Sequence

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

BASIC_CHALLENGE = 'Basic realm="pbxfront", charset="UTF-8"'


class DeviceAuth:
    """Verifies event-sender credentials; one per service application.

    The Digest authenticator is created on first use because its key lives in PostgreSQL and the
    pool reaches a service only with its first request.
    """

    def __init__(self, algorithms: Sequence[str], nonce_lifetime: float) -> None:
        self._algorithms = tuple(algorithms)
        self._nonce_lifetime = nonce_lifetime
        self._authenticator: DigestAuthenticator | None = None
        self._lock = asyncio.Lock()
        self.basic_cache = VerifiedCache()

    async def authenticator(self, pool: asyncpg.Pool) -> DigestAuthenticator:
        if self._authenticator is None:
            async with self._lock:
                if self._authenticator is None:
                    async with acquire(pool) as connection:
                        secret = await load_secret(connection)
                    self._authenticator = DigestAuthenticator(
                        NonceSigner(secret, self._nonce_lifetime), self._algorithms
                    )
        return self._authenticator

    async def challenges(self, pool: asyncpg.Pool, *, stale: bool = False) -> tuple[str, ...]:
        authenticator = await self.authenticator(pool)
        return (*authenticator.challenges(stale=stale), BASIC_CHALLENGE)

    async def unauthenticated(self, pool: asyncpg.Pool, message: str) -> errors.Unauthenticated:
        """A 401 offering every challenge (raise it)."""
        return errors.Unauthenticated(message, await self.challenges(pool))

    async def sender_account(self, request: web.Request, pool: asyncpg.Pool, header: str) -> str:
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
            raise errors.Unauthenticated(
                "Digest: malformed credentials", await self.challenges(pool)
            )
        basic = parse_basic(header) if digest is None else None
        claimed = digest.username if digest is not None else basic.name if basic else None
        guard.refuse_if_limited(request, claimed)
        authenticator = await self.authenticator(pool)
        if digest is not None:
            async with acquire(pool) as connection:
                result = await authenticator.verify(
                    digest,
                    method=request.method,
                    uri=request.raw_path,
                    lookup=AccountRepository(connection).digest_ha1,
                    counter=PostgresNonceCounter(pool),
                )
            if result.username is not None:
                guard.succeeded(request, result.username)
                return result.username
            reason = result.failure.value if result.failure else "refused"
            if not result.stale:
                # A stale nonce with the right response is the normal renewal, not a failure.
                guard.failed(request, result.claimed, reason)
            raise errors.Unauthenticated(
                f"Digest: {reason}", await self.challenges(pool, stale=result.stale)
            )
        if basic is not None:
            account = await verify_login(
                pool, basic.name, basic.password, self.basic_cache, guard.hashing
            )
            if account is not None and Role.EVENT_SENDER in account.roles:
                guard.succeeded(request, account.name)
                return account.name
            guard.failed(request, basic.name, "wrong password or role")
            raise errors.Unauthenticated("wrong credentials", await self.challenges(pool))
        guard.failed(request, None, "malformed or unsupported credentials")
        raise errors.Unauthenticated("unsupported credentials", await self.challenges(pool))
