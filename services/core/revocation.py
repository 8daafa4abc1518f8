"""Revoked provider certificates are refused right after the TLS handshake, on every worker.

The provider CA keeps what it issued and revoked in ``ca_certificates`` (migration 008; `pbxfront
ca revoke` and the roll-out write it). Every process that serves a listener asking for client
certificates holds the revoked ones as a set of (issuer, serial), read at start and again on each
``NOTIFY pbxfront_revocations`` (migration 011's trigger sends it when a revocation commits, who
ever writes it). A connection whose verified certificate is in the set is closed before its first
byte of application data is read, and connections already open with a certificate revoked since
are closed too; so a revocation bites within the time a NOTIFY takes, on every node.

Why not a CRL in the SSL context (``VERIFY_CRL_CHECK_LEAF``): OpenSSL then requires a current CRL
for every trust anchor in ``client_ca``, and the innovaphone device CA's is not ours to load, so
every innovaphone certificate would fail; a CRL past its nextUpdate fails every device at once;
signing fresh CRLs needs the CA key on every node; and each change means rebuilding every
context and writing files. The set is read with the LISTEN connection up (``core.listen``), so a
change committed while it was down is read on reconnect; while PostgreSQL is unreachable the last
set read stays in force (a failed reload is logged, never an empty set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable

import asyncpg
from cryptography import x509

from services.core.listen import PoolListener

log = logging.getLogger(__name__)
security_log = logging.getLogger("pbxfront.security")

CHANNEL = "pbxfront_revocations"

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
    """Keeps a :class:`Revocations` current from PostgreSQL (one per process)."""

    def __init__(self, revocations: Revocations) -> None:
        self.revocations = revocations
        self._pool: asyncpg.Pool | None = None
        self._listener = PoolListener({CHANNEL: self._notified}, on_listening=self._reread)
        self._reload: asyncio.Task[None] | None = None
        self._again = False

    async def start(self, pool: asyncpg.Pool) -> None:
        """Read the set once before the listeners open (a failure is logged and retried by the
        LISTEN connection when PostgreSQL is back), then follow changes."""
        self._pool = pool
        try:
            async with asyncio.timeout(5.0):
                await self._load(pool)
        except _ERRORS as error:
            log.error("revocations: cannot read them yet (%s); retrying", error)
        self._listener.start(pool)

    async def _reread(self, connection: asyncpg.Connection) -> None:
        await self._load(connection)

    async def _load(self, db: asyncpg.Connection | asyncpg.Pool) -> None:
        certificates = await RevocationRepository(db).revoked_certificates()
        before = len(self.revocations)
        self.revocations.replace(certificates)
        if len(self.revocations) != before or not before:
            log.info("revocations: %d revoked certificates in force", len(self.revocations))

    def _notified(self, *_arguments: object) -> None:
        if self._reload is not None and not self._reload.done():
            self._again = True
            return
        self._reload = asyncio.get_running_loop().create_task(self._reload_now())

    async def _reload_now(self) -> None:
        assert self._pool is not None
        while True:
            self._again = False
            try:
                async with asyncio.timeout(10.0):
                    await self._load(self._pool)
            except _ERRORS as error:
                # Keep the old set; the next NOTIFY or reconnect reads again.
                log.error("revocations: reload failed, keeping the previous set: %s", error)
            if not self._again:
                return

    async def close(self) -> None:
        await self._listener.close()
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload
