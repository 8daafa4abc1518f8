"""HTTP Digest access authentication (RFC 7616) for device accounts.

protocol.md §5/§6: devices send the credentials of their HTTP client settings, Basic or Digest
[NC], so the device-facing services accept both. Supported here: ``MD5`` and ``SHA-256``,
``qop=auth`` only (no ``auth-int``, no RFC 2069 requests without qop), no ``-sess`` variants,
no ``userhash``.

The server cannot check a Digest response against an argon2 hash; it needs
``HA1 = H(name:realm:password)``. ``core.auth`` stores HA1 per algorithm for realm
:data:`REALM`, only for accounts with the ``event-sender`` role, whenever such an account's
password is set (see ``migrations/005_backup.sql``).

Nonces are stateless and signed: ``base64url(issued-ms | random | HMAC-SHA256(secret, …)[:16])``
with a secret shared by every node through PostgreSQL (:func:`load_secret`), so a nonce issued by
one node or worker is accepted by all. A nonce older than the lifetime is *stale*: a request with
a correct response is answered 401 with ``stale=true`` so the client retries with the fresh nonce
without asking its user. Replays are refused by tracking the highest nonce count (``nc``) used
with each nonce (:class:`PostgresNonceCounter`, cluster-wide; :class:`MemoryNonceCounter` for one
process): a request must use a higher count than any accepted before with the same nonce.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asyncpg

# The realm of every stored HA1. Changing it invalidates them all (passwords must be set again).
REALM = "pbxfront"

# RFC 7616 algorithm name -> hashlib name.
HASHES = {"MD5": "md5", "SHA-256": "sha256"}
ALGORITHMS = tuple(HASHES)

_NONCE_RANDOM_BYTES = 12
_NONCE_MAC_BYTES = 16
_NONCE_LENGTH = 8 + _NONCE_RANDOM_BYTES + _NONCE_MAC_BYTES
_NONCE_COUNT = re.compile(r"[0-9a-fA-F]{8}")
# auth-param = token "=" ( token / quoted-string ), RFC 7235 §2.1.
_AUTH_PARAM = re.compile(
    r"""\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)"""
)


def hash_hex(algorithm: str, text: str) -> str:
    # MD5 is there because RFC 7616 and older devices require it, not by choice (FIPS builds
    # refuse MD5 unless told so).
    data = text.encode("utf-8")
    return hashlib.new(HASHES[algorithm], data, usedforsecurity=algorithm != "MD5").hexdigest()


def compute_ha1(algorithm: str, name: str, realm: str, password: str) -> str:
    """``H(name:realm:password)``, what the server stores instead of the password."""
    return hash_hex(algorithm, f"{name}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1: str,
    *,
    nonce: str,
    nonce_count: str,
    cnonce: str,
    method: str,
    uri: str,
    qop: str = "auth",
) -> str:
    """RFC 7616 §3.4.1: ``H(HA1:nonce:nc:cnonce:qop:H(method:uri))``."""
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    return hash_hex(algorithm, f"{ha1}:{nonce}:{nonce_count}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True)
class DigestCredentials:
    """The parameters of an ``Authorization: Digest …`` header."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nonce_count: str | None
    cnonce: str | None
    opaque: str | None


def parse_digest(header: str | None) -> DigestCredentials | None:
    """``Authorization: Digest …`` -> its parameters; None when absent, another scheme or
    malformed (missing a required parameter, a parameter twice, unparsable)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest" or not rest.strip():
        return None
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _AUTH_PARAM.match(rest, position)
        if match is None or match.end() == position:
            return None
        key, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if key in params:
            return None
        params[key] = raw
        position = match.end()
    required = ("username", "realm", "nonce", "uri", "response")
    if any(not params.get(key) for key in required):
        return None
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        # RFC 7616 §3.4: absent means MD5.
        algorithm=params.get("algorithm", "MD5"),
        qop=params.get("qop"),
        nonce_count=params.get("nc"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
    )


class NonceState(enum.Enum):
    VALID = "valid"
    STALE = "stale"
    INVALID = "invalid"


class NonceSigner:
    """Issues and checks signed, time-stamped nonces; ``now`` is seconds since the epoch."""

    def __init__(self, secret: bytes, lifetime: float) -> None:
        if len(secret) < 32:
            raise ValueError("the nonce secret must have at least 32 bytes")
        self._secret = secret
        self.lifetime = lifetime
        self.opaque = hmac.new(secret, b"pbxfront digest opaque", hashlib.sha256).hexdigest()[:32]

    def _mac(self, head: bytes) -> bytes:
        return hmac.new(self._secret, head, hashlib.sha256).digest()[:_NONCE_MAC_BYTES]

    def issue(self, now: float) -> str:
        head = struct.pack(">Q", int(now * 1000)) + secrets.token_bytes(_NONCE_RANDOM_BYTES)
        return base64.urlsafe_b64encode(head + self._mac(head)).decode("ascii")

    def issued_at(self, nonce: str) -> float | None:
        """When a nonce of ours was issued (seconds); None for a forged or foreign one."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return None
        if len(raw) != _NONCE_LENGTH:
            return None
        head, mac = raw[:-_NONCE_MAC_BYTES], raw[-_NONCE_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(head)):
            return None
        (milliseconds,) = struct.unpack(">Q", head[:8])
        return float(milliseconds) / 1000.0

    def check(self, nonce: str, now: float) -> NonceState:
        issued = self.issued_at(nonce)
        if issued is None or issued > now + 5:  # 5 s of clock skew between nodes
            return NonceState.INVALID
        if now - issued > self.lifetime:
            return NonceState.STALE
        return NonceState.VALID


class NonceCounter(Protocol):
    async def advance(self, nonce: str, count: int, expires_at: float) -> bool:
        """Record ``count`` for ``nonce``; False if it is not higher than one seen before."""


class MemoryNonceCounter:
    """Nonce counts in this process only (tests, single-process tools); bounded."""

    def __init__(self, size: int = 100_000) -> None:
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._size = size

    async def advance(self, nonce: str, count: int, expires_at: float) -> bool:
        previous = self._counts.get(nonce)
        if previous is not None and previous[0] >= count:
            return False
        self._counts[nonce] = (count, expires_at)
        self._counts.move_to_end(nonce)
        while len(self._counts) > self._size:
            self._counts.popitem(last=False)
        return True


class PostgresNonceCounter:
    """Nonce counts in PostgreSQL, so a replay is refused by every node of the cluster.

    One statement per authenticated request; rows of expired nonces are removed by
    :meth:`forget_expired` (the backup service's maintenance run calls it).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def advance(self, nonce: str, count: int, expires_at: float) -> bool:
        row = await self._pool.fetchval(
            """
            INSERT INTO digest_nonce_uses AS u (nonce, nonce_count, expires_at)
            VALUES ($1, $2, $3)
            ON CONFLICT (nonce) DO UPDATE SET nonce_count = EXCLUDED.nonce_count
                WHERE u.nonce_count < EXCLUDED.nonce_count
            RETURNING nonce_count
            """,
            nonce,
            count,
            datetime.fromtimestamp(expires_at, UTC),
        )
        return row is not None

    async def forget_expired(self, now: datetime) -> int:
        status: str = await self._pool.execute(
            "DELETE FROM digest_nonce_uses WHERE expires_at < $1", now
        )
        return int(status.rsplit(" ", 1)[-1])


async def load_secret(connection: asyncpg.Connection | asyncpg.Pool) -> bytes:
    """The cluster's nonce-signing key; the first caller creates it."""
    await connection.execute(
        "INSERT INTO digest_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING",
        secrets.token_bytes(32),
    )
    secret: bytes = await connection.fetchval("SELECT secret FROM digest_secret")
    return secret


class Failure(enum.Enum):
    MALFORMED = "malformed Digest credentials"
    WRONG_REALM = "wrong realm"
    ALGORITHM = "algorithm not offered"
    QOP = "qop must be auth"
    URI = "uri does not match the request"
    NONCE = "unknown nonce"
    OPAQUE = "wrong opaque"
    STALE = "stale nonce"
    CREDENTIALS = "wrong name or password"
    REPLAY = "nonce count replayed"


@dataclass(frozen=True)
class DigestResult:
    """``username`` when the credentials are right, else the ``failure`` (never both)."""

    username: str | None
    failure: Failure | None
    # The name the client sent (for logs), even when it failed.
    claimed: str | None = None

    @property
    def stale(self) -> bool:
        return self.failure is Failure.STALE


# name, realm, algorithm -> stored HA1 (None: no such account, or no Digest for it).
Ha1Lookup = Callable[[str, str, str], Awaitable[str | None]]


class DigestAuthenticator:
    """Challenges and verification for one realm and a preference-ordered algorithm list."""

    def __init__(
        self,
        signer: NonceSigner,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        realm: str = REALM,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = [a for a in algorithms if a not in HASHES]
        if unknown or not algorithms:
            raise ValueError(f"digest algorithms: unknown or none: {unknown}")
        self.signer = signer
        self.algorithms = tuple(algorithms)
        self.realm = realm
        self.clock = clock

    def challenges(self, *, stale: bool = False) -> tuple[str, ...]:
        """One ``WWW-Authenticate`` value per algorithm, preferred first (RFC 7616 §3.7)."""
        nonce = self.signer.issue(self.clock())
        return tuple(
            f'Digest realm="{self.realm}", qop="auth", algorithm={algorithm}, '
            f'nonce="{nonce}", opaque="{self.signer.opaque}"' + (", stale=true" if stale else "")
            for algorithm in self.algorithms
        )

    async def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        uri: str,
        lookup: Ha1Lookup,
        counter: NonceCounter,
    ) -> DigestResult:
        """Check one request's Digest credentials; ``uri`` is the request target as sent."""
        name = credentials.username

        def failed(failure: Failure) -> DigestResult:
            return DigestResult(None, failure, name)

        if credentials.realm != self.realm:
            return failed(Failure.WRONG_REALM)
        if credentials.algorithm not in self.algorithms:
            return failed(Failure.ALGORITHM)
        if credentials.qop != "auth":
            return failed(Failure.QOP)
        if (
            credentials.nonce_count is None
            or not _NONCE_COUNT.fullmatch(credentials.nonce_count)
            or int(credentials.nonce_count, 16) == 0
            or not credentials.cnonce
        ):
            return failed(Failure.MALFORMED)
        if credentials.uri != uri:
            return failed(Failure.URI)
        if credentials.opaque is not None and not hmac.compare_digest(
            credentials.opaque, self.signer.opaque
        ):
            return failed(Failure.OPAQUE)
        now = self.clock()
        state = self.signer.check(credentials.nonce, now)
        if state is NonceState.INVALID:
            return failed(Failure.NONCE)
        ha1 = await lookup(name, self.realm, credentials.algorithm)
        # Unknown names cost the same hashing as known ones.
        expected = compute_response(
            credentials.algorithm,
            ha1 or hash_hex(credentials.algorithm, secrets.token_hex(16)),
            nonce=credentials.nonce,
            nonce_count=credentials.nonce_count,
            cnonce=credentials.cnonce,
            method=method,
            uri=credentials.uri,
        )
        if ha1 is None or not hmac.compare_digest(expected, credentials.response):
            return failed(Failure.CREDENTIALS)
        if state is NonceState.STALE:
            return failed(Failure.STALE)
        issued = self.signer.issued_at(credentials.nonce) or now
        fresh = await counter.advance(
            credentials.nonce, int(credentials.nonce_count, 16), issued + self.signer.lifetime
        )
        if not fresh:
            return failed(Failure.REPLAY)
        return DigestResult(name, None, name)
