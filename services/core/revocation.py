"""Revoked provider certificates are refused right after the TLS handshake, on every worker.

The provider CA keeps what it issued and revoked in ``ca_certificates`` (migration 008; `pbxfront
ca revoke` and the roll-out write it). Every process that serves a listener asking for client
certificates holds the revoked ones as a set of (issuer, serial), read at start and again within
a second of any revocation committing, whoever writes it (:class:`RevocationWatcher`). A
connection whose verified certificate is in the set is closed before its first byte of
application data is read, and connections already open with a certificate revoked since are
closed too; so a revocation bites within about a second, on every worker of every node.

Why not a CRL in the SSL context (``VERIFY_CRL_CHECK_LEAF``): OpenSSL then requires a current CRL
for every trust anchor in ``client_ca``, and the innovaphone device CA's is not ours to load, so
every innovaphone certificate would fail; a CRL past its nextUpdate fails every device at once;
signing fresh CRLs needs the CA key on every node; and each change means rebuilding every
context and writing files. While PostgreSQL is unreachable the last set read stays in force (a
failed check is logged, never an empty set); the first check after it returns catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable

import asyncpg
from cryptography import x509

log = logging.getLogger(__name__)
security_log = logging.getLogger("pbxfront.security")

_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class RevocationRepository:
    """Reads the revoked leaf certificates (a retired RootCA's own row revokes nothing)."""

    def __init__(self, db: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = db

    async def revoked_certificates(self) -> list[bytes]:
        """The DER of every revoked leaf certificate, any CA."""
        rows = await self._db.fetch(
            """
            SELECT certificate FROM ca_certificates
            WHERE revoked_at IS NOT NULL AND kind <> 'root'
            """
        )
        return [bytes(row["certificate"]) for row in rows]

    async def state(self) -> tuple[int, object]:
        """(how many, newest revocation time): changes whenever a certificate is revoked."""
        row = await self._db.fetchrow(
            """
            SELECT count(*) AS revoked, max(revoked_at) AS newest FROM ca_certificates
            WHERE revoked_at IS NOT NULL AND kind <> 'root'
            """
        )
        assert row is not None
        return int(row["revoked"]), row["newest"]


def _issuer_and_serial(der: bytes) -> tuple[bytes, int] | None:
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return certificate.issuer.public_bytes(), certificate.serial_number


class Revocations:
    """The revoked (issuer, serial) pairs of one process, and the open connections to recheck
    when they change."""

    def __init__(self) -> None:
        self._by_serial: dict[int, frozenset[bytes]] = {}
        self._open: dict[object, tuple[ssl.SSLObject, Callable[[int], None]]] = {}
        self.loaded = False

    def __len__(self) -> int:
        return sum(len(issuers) for issuers in self._by_serial.values())

    def replace(self, certificates: Iterable[bytes]) -> None:
        by_serial: dict[int, set[bytes]] = {}
        for der in certificates:
            found = _issuer_and_serial(der)
            if found is not None:
                issuer, serial = found
                by_serial.setdefault(serial, set()).add(issuer)
        self._by_serial = {serial: frozenset(issuers) for serial, issuers in by_serial.items()}
        self.loaded = True
        for key, (ssl_object, close) in list(self._open.items()):
            revoked = self.revoked_serial(ssl_object)
            if revoked is not None:
                self._open.pop(key, None)
                close(revoked)

    def revoked_serial(self, ssl_object: ssl.SSLObject | None) -> int | None:
        """The peer certificate's serial if it is revoked, else None (also without one)."""
        if ssl_object is None or not self._by_serial:
            return None
        peercert = ssl_object.getpeercert()
        if not peercert or "serialNumber" not in peercert:
            return None
        serial = int(str(peercert["serialNumber"]), 16)
        issuers = self._by_serial.get(serial)
        if issuers is None:
            return None
        # Serials are unique per issuer only: compare the issuer too (rarely reached).
        der = ssl_object.getpeercert(binary_form=True)
        found = _issuer_and_serial(der) if der else None
        return serial if found is not None and found[0] in issuers else None

    def watch(self, key: object, ssl_object: ssl.SSLObject, close: Callable[[int], None]) -> None:
        """Recheck this open connection on every change; ``close(serial)`` once it is revoked."""
        self._open[key] = (ssl_object, close)

    def forget(self, key: object) -> None:
        self._open.pop(key, None)


def log_refused(peer: str, serial: int) -> None:
    security_log.warning(
        "pbxfront security: tls-certificate-revoked from %s serial=%x", peer, serial
    )


class RevocationWatcher:
    """Keeps a :class:`Revocations` current from PostgreSQL (one per process).

    Every ``REFRESH`` seconds it asks PostgreSQL for the count and newest time of revocations
    (the partial index of migration 008 answers that without touching other rows) and rereads
    the set only when they changed. Polling rather than LISTEN: a LISTEN connection is held for
    good, and one more per worker besides the update service's and the directory's starved
    small pools under load; this borrows a connection for a millisecond a second. A check that
    fails keeps the old set and is retried on the next tick.
    """

    REFRESH = 1.0

    def __init__(self, revocations: Revocations) -> None:
        self.revocations = revocations
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen: tuple[int, object] | None = None
        self._failing = False

    async def start(self, pool: asyncpg.Pool) -> None:
        """Read the set once before the listeners open, then follow changes."""
        self._pool = pool
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def check(self) -> None:
        """Reread the set if a revocation was added since the last check."""
        assert self._pool is not None
        repository = RevocationRepository(self._pool)
        try:
            async with asyncio.timeout(5.0):
                seen = await repository.state()
                if seen != self._seen:
                    self.revocations.replace(await repository.revoked_certificates())
                    self._seen = seen
                    log.info("revocations: %d revoked certificates in force", len(self.revocations))
        except _ERRORS as error:
            if not self._failing:
                log.error("revocations: cannot read them, keeping the previous set: %s", error)
            self._failing = True
            return
        self._failing = False

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.REFRESH)
            await self.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
