"""Accounts, roles, argon2 password hashes, HTTP Basic and bearer-token authentication.

HTTP Digest (``core.digest``) cannot use an argon2 hash: for accounts with the ``event-sender``
role (the devices' "HTTP client" account of the seed) the Digest HA1 values
``H(name:realm:password)`` for realm ``core.digest.REALM`` are stored too (``account_digests``),
computed whenever the password is set and dropped when the role or the account goes. An account
that gets the role later needs its password set again before it can use Digest. An HA1 is
password-equivalent for that realm, so only these device accounts have one.

Password checks run argon2id in a worker thread (it is deliberately slow) and compare secrets in
constant time. A successful check is remembered for a short while, keyed by a SHA-256 of the
credentials and the stored hash, so devices that send Basic credentials on every poll do not cost
an argon2 run each; a password change invalidates the entry because the hash changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.core import errors
from services.core.db import acquire, transaction
from services.core.digest import ALGORITHMS, REALM, compute_ha1


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    DIRECTORY_READER = "directory-reader"
    EVENT_SENDER = "event-sender"
    PROVIDER = "provider"


ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD_LENGTH = 12

_hasher = PasswordHasher()


class AccountError(ValueError):
    """Invalid account data; the message names the field."""


@dataclass(frozen=True)
class Account:
    name: str
    roles: frozenset[Role]

    def has_any(self, roles: frozenset[Role]) -> bool:
        return bool(self.roles & roles)


def parse_roles(values: list[str] | tuple[str, ...]) -> frozenset[Role]:
    roles: set[Role] = set()
    for value in values:
        try:
            roles.add(Role(value.strip()))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise AccountError(f"role: unknown role {value!r} (known: {known})") from None
    if not roles:
        raise AccountError("role: at least one role is needed")
    return frozenset(roles)


def check_account_name(name: str) -> str:
    if not ACCOUNT_NAME.fullmatch(name):
        raise AccountError(
            "name: 1-64 characters of letters, digits, _ . @ - (starting alphanumeric)"
        )
    return name


def check_password_strength(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password: must be at least {MIN_PASSWORD_LENGTH} characters")
    return password


def digest_ha1s(name: str, password: str) -> tuple[list[str], list[str]]:
    """(algorithms, HA1 values) for realm ``digest.REALM``: what Digest needs of a password."""
    algorithms = list(ALGORITHMS)
    return algorithms, [compute_ha1(a, name, REALM, password) for a in algorithms]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# A hash that verifies nothing, checked when an account does not exist so that unknown names and
# wrong passwords take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class HashGate:
    """Bounds concurrent argon2 work: at most ``concurrency`` hashes run (each in a worker
    thread, each taking argon2's memory cost, 64 MiB by default), at most ``queue`` more wait;
    beyond that the check is refused at once (Busy, 503), so a flood of logins can neither take
    unbounded memory nor occupy every thread of the default executor (firmware and file reads
    share it)."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self.concurrency = concurrency
        self.queue = queue
        # asyncio's primitives take the running loop only once they must wait (Python 3.10+).
        self._semaphore = asyncio.Semaphore(concurrency)
        self.waiting = 0
        self.running = 0
        self.peak = 0
        self.refused = 0

    async def run(self, work: Callable[[str, str], bool], stored: str, password: str) -> bool:
        if self.waiting >= self.queue and self._semaphore.locked():
            self.refused += 1
            raise errors.Busy("too many password checks at once, retry in a moment")
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            return await asyncio.to_thread(work, stored, password)
        finally:
            self.running -= 1
            self._semaphore.release()


class VerifiedCache:
    """Recently verified (name, password, hash) triples, bounded and short-lived."""

    def __init__(self, size: int = 4096, ttl: float = 300.0) -> None:
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._size = size
        self._ttl = ttl

    @staticmethod
    def key(name: str, password: str, password_hash: str) -> bytes:
        material = "\0".join((name, password, password_hash)).encode("utf-8", "surrogateescape")
        return hashlib.sha256(material).digest()

    def hit(self, key: bytes) -> bool:
        expires = self._entries.get(key)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._entries[key]
            return False
        return True

    def add(self, key: bytes) -> None:
        self._entries[key] = time.monotonic() + self._ttl
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


class AccountRepository:
    """Accounts and API tokens. Names are unique; every method is one statement or transaction."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def add(self, name: str, roles: frozenset[Role], password: str) -> None:
        """Create an account; AccountError if the name exists or the input is invalid."""
        check_account_name(name)
        check_password_strength(password)
        password_hash = await asyncio.to_thread(hash_password, password)
        try:
            async with transaction(self._db) as connection:
                await connection.execute(
                    "INSERT INTO accounts (name, roles, password_hash) VALUES ($1, $2, $3)",
                    name,
                    sorted(r.value for r in roles),
                    password_hash,
                )
                if Role.EVENT_SENDER in roles:
                    await self._store_digests(connection, name, password)
        except asyncpg.UniqueViolationError:
            raise AccountError(f"name: account {name!r} exists already") from None

    @staticmethod
    async def _store_digests(connection: asyncpg.Connection, name: str, password: str) -> None:
        algorithms, values = digest_ha1s(name, password)
        await connection.execute("DELETE FROM account_digests WHERE account = $1", name)
        await connection.execute(
            """INSERT INTO account_digests (account, realm, algorithm, ha1)
               SELECT $1, $2, t.algorithm, t.ha1 FROM unnest($3::text[], $4::text[])
                   AS t(algorithm, ha1)""",
            name,
            REALM,
            algorithms,
            values,
        )

    async def digest_ha1(self, name: str, realm: str, algorithm: str) -> str | None:
        """The stored Digest HA1 of an event-sender account, or None (unknown name, another
        role, password not set since the role was granted)."""
        ha1: str | None = await self._db.fetchval(
            """SELECT d.ha1 FROM account_digests d JOIN accounts a ON a.name = d.account
               WHERE d.account = $1 AND d.realm = $2 AND d.algorithm = $3
                 AND 'event-sender' = ANY (a.roles)""",
            name,
            realm,
            algorithm,
        )
        return ha1

    async def get(self, name: str) -> Account | None:
        row = await self._db.fetchrow("SELECT name, roles FROM accounts WHERE name = $1", name)
        if row is None:
            return None
        return Account(row["name"], frozenset(Role(r) for r in row["roles"]))

    async def set_password(self, name: str, password: str) -> bool:
        check_password_strength(password)
        password_hash = await asyncio.to_thread(hash_password, password)
        async with transaction(self._db) as connection:
            roles = await connection.fetchval(
                """UPDATE accounts SET password_hash = $2, updated_at = now() WHERE name = $1
                   RETURNING roles""",
                name,
                password_hash,
            )
            if roles is None:
                return False
            if Role.EVENT_SENDER.value in roles:
                await self._store_digests(connection, name, password)
            # Tokens issued under the old password do not survive a password change.
            await connection.execute("DELETE FROM api_tokens WHERE account = $1", name)
        return True

    async def set_roles(self, name: str, roles: frozenset[Role]) -> bool:
        async with transaction(self._db) as connection:
            status: str = await connection.execute(
                "UPDATE accounts SET roles = $2, updated_at = now() WHERE name = $1",
                name,
                sorted(r.value for r in roles),
            )
            if Role.EVENT_SENDER not in roles:
                # Digest HA1s exist only for event senders (see the module docstring).
                await connection.execute("DELETE FROM account_digests WHERE account = $1", name)
        return not status.endswith(" 0")

    async def remove(self, name: str) -> bool:
        status: str = await self._db.execute("DELETE FROM accounts WHERE name = $1", name)
        return not status.endswith(" 0")

    async def list(self) -> list[Account]:
        rows = await self._db.fetch("SELECT name, roles FROM accounts ORDER BY name")
        return [Account(row["name"], frozenset(Role(r) for r in row["roles"])) for row in rows]

    async def password_of(self, name: str) -> tuple[Account | None, str]:
        """(the account, its password hash), or (None, a hash that verifies nothing)."""
        row = await self._db.fetchrow(
            "SELECT name, roles, password_hash FROM accounts WHERE name = $1", name
        )
        if row is None:
            return None, _DUMMY_HASH
        return Account(row["name"], frozenset(Role(r) for r in row["roles"])), row["password_hash"]

    async def verify(
        self,
        name: str,
        password: str,
        cache: VerifiedCache | None = None,
        gate: HashGate | None = None,
    ) -> Account | None:
        """The account if ``password`` is right, else None (same cost for unknown names).
        With a ``gate`` the argon2 check waits for its turn there (Busy when it is full).
        The connection stays held during the check: from a request use :func:`verify_login`."""
        if not valid_credential_text(name) or not valid_credential_text(password, 1024):
            # NUL or unencodable text cannot be in PostgreSQL; never send it there.
            return None
        account, stored = await self.password_of(name)
        return await check_password(account, stored, name, password, cache, gate)

    async def issue_token(self, name: str, lifetime: float) -> str:
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=lifetime)
        await self._db.execute(
            "INSERT INTO api_tokens (token_sha256, account, expires_at) VALUES ($1, $2, $3)",
            hashlib.sha256(token.encode()).digest(),
            name,
            expires,
        )
        return token

    async def by_token(self, token: str) -> Account | None:
        """The account a live token belongs to. Lookup is by hash, so timing reveals nothing."""
        row = await self._db.fetchrow(
            """SELECT a.name, a.roles FROM api_tokens t JOIN accounts a ON a.name = t.account
               WHERE t.token_sha256 = $1 AND t.expires_at > now()""",
            hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest(),
        )
        if row is None:
            return None
        return Account(row["name"], frozenset(Role(r) for r in row["roles"]))

    async def revoke_token(self, token: str) -> bool:
        status: str = await self._db.execute(
            "DELETE FROM api_tokens WHERE token_sha256 = $1",
            hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest(),
        )
        return not status.endswith(" 0")


async def check_password(
    account: Account | None,
    stored: str,
    name: str,
    password: str,
    cache: VerifiedCache | None = None,
    gate: HashGate | None = None,
) -> Account | None:
    """``account`` if ``password`` matches its ``stored`` hash (cache first), else None."""
    key = VerifiedCache.key(name, password, stored)
    if account is not None and cache is not None and cache.hit(key):
        return account
    if gate is not None:
        valid = await gate.run(verify_password, stored, password)
    else:
        valid = await asyncio.to_thread(verify_password, stored, password)
    if account is None or not valid:
        return None
    if cache is not None:
        cache.add(key)
    return account


async def verify_login(
    pool: asyncpg.Pool,
    name: str,
    password: str,
    cache: VerifiedCache | None = None,
    gate: HashGate | None = None,
) -> Account | None:
    """:meth:`AccountRepository.verify` for request handlers: the pool connection is given back
    before the argon2 check, so checks waiting in the gate hold no database connection (a login
    flood must not starve the pool)."""
    if not valid_credential_text(name) or not valid_credential_text(password, 1024):
        return None
    async with acquire(pool) as connection:
        account, stored = await AccountRepository(connection).password_of(name)
    return await check_password(account, stored, name, password, cache, gate)


def valid_credential_text(value: str, max_length: int = 256) -> bool:
    """Text that may be looked up as a name or checked as a password: no NUL (PostgreSQL text
    cannot hold one), encodable as UTF-8 (no lone surrogates), not absurdly long."""
    if len(value) > max_length or "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class BasicCredentials:
    name: str
    password: str


def parse_basic(header: str | None) -> BasicCredentials | None:
    """``Authorization: Basic …`` -> credentials, or None when absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    if not sep or not name:
        return None
    if not valid_credential_text(name) or not valid_credential_text(password, 1024):
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return None
    return BasicCredentials(name, password)


def parse_bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    if not valid_credential_text(value.strip(), 1024):
        return None
    return value.strip()


def secrets_equal(left: str, right: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(
        left.encode("utf-8", "surrogateescape"), right.encode("utf-8", "surrogateescape")
    )
