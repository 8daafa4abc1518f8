"""TLS for listeners: server contexts that reload on SIGHUP, and a guarded accept path.

Python's ``ssl`` has no nginx-style ``optional_no_ca``: on a listener that requests client
certificates, a certificate from an unknown CA fails the handshake. A listener therefore either
requests certificates (devices are then proven or refused at the handshake) or does not (every
caller is claimed or anonymous); a Frontend typically offers both ports.

Connections are accepted by our own loop and handed to the event loop's TLS with
``connect_accepted_socket``. That gives what ``create_server(ssl=…)`` hides: a failed handshake is
an exception, logged with the peer address and reason; the handshake has a deadline; the context
can be swapped for new connections while open ones keep theirs; slow request headers are cut off.

Session resumption: every context of a listener, in every worker of the node, gets the same
session-ticket key (``core/ticketkeys.py``; each listener its own), so a device resumes its
session on whichever worker the kernel hands its connection to, before and after a certificate
reload; the key is shared through PostgreSQL with every node and kept across restarts
(``core/ticketstore.py``). Where that key cannot be set safely, the
runner builds the contexts before forking and the workers share OpenSSL's own key until a reload.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from services.core.guard import AcceptLoop, ConnectionGuard, Ticket, peer_text
from services.core.revocation import Revocations, log_refused
from services.core.ticketkeys import TicketKeyError, TicketKeys

if typing.TYPE_CHECKING:
    from services.core.metrics import Metrics

log = logging.getLogger(__name__)
security_log = logging.getLogger("pbxfront.security")

HEADER_END = b"\r\n\r\n"
# Stop looking for the end of the first request's headers after this many bytes; aiohttp's own
# limits reject anything larger.
HEADER_SCAN_LIMIT = 128 * 1024


class TlsConfigError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path
    client_ca: tuple[Path, ...] = ()
    request_client_certificate: bool = False


def build_server_context(files: TlsFiles, keys: TicketKeys | None = None) -> ssl.SSLContext:
    """A listener's server context; with ``keys``, it issues and accepts tickets under them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (files.certificate, files.key, *files.client_ca):
        if not path.is_file():
            raise TlsConfigError(f"{path}: no such file")
    try:
        context.load_cert_chain(str(files.certificate), str(files.key))
    except (ssl.SSLError, OSError) as error:
        raise TlsConfigError(
            f"{files.certificate} / {files.key}: cannot load certificate and key: {error}"
        ) from None
    if files.request_client_certificate:
        context.verify_mode = ssl.CERT_OPTIONAL
        for ca_path in files.client_ca:
            try:
                context.load_verify_locations(cafile=str(ca_path))
            except (ssl.SSLError, OSError) as error:
                raise TlsConfigError(f"{ca_path}: cannot load trust anchors: {error}") from None
    if keys is not None:
        keys.apply(context)
    return context


def node_ticket_keys(files: TlsFiles | None) -> TicketKeys | None:
    """A new session-ticket key, proven with ``files`` (one listener's certificate); its
    ``another()`` gives each further listener a key of its own. None, with a warning saying
    why, where keys cannot be set."""
    if files is None:
        return None
    try:
        keys = TicketKeys.load(lambda: build_server_context(files))
    except TicketKeyError as error:
        log.warning(
            "TLS session tickets: no shared ticket key on this Python/OpenSSL (%s); the "
            "workers share OpenSSL's own key until a certificate reload",
            error,
        )
        return None
    if not keys.accepts_previous:
        log.warning(
            "TLS session tickets: OpenSSL's ticket-key callback is not usable here (%s); after "
            "a key rotation, tickets under the previous key get a full handshake",
            keys.previous_refusal,
        )
    return keys


class ContextHolder:
    """The current server context of one listener; ``reload()`` swaps it for new connections.
    Every context it builds uses ``keys`` (when given), so tickets survive a reload."""

    def __init__(self, files: TlsFiles, keys: TicketKeys | None = None) -> None:
        self.files = files
        self.keys = keys
        self.context = build_server_context(files, keys)
        # Counts reloads, so a rekey() that built its context meanwhile builds it again.
        self._generation = 0

    async def rekey(self, keys: TicketKeys) -> None:
        """Use ``keys`` from now on (a key shared through PostgreSQL, core/ticketstore.py): new
        connections get a context built with them, open ones keep theirs, later reloads keep
        them. The context is built in a thread (it reads the certificate files). Raises
        TlsConfigError / TicketKeyError and keeps the current context and key."""
        while True:
            generation = self._generation
            context = await asyncio.to_thread(build_server_context, self.files, keys)
            if generation == self._generation:
                break
        self.keys = keys
        self.context = context

    def reload(self) -> bool:
        """Rebuild from the files; on error keep the old context and log why."""
        self._generation += 1
        try:
            self.context = build_server_context(self.files, self.keys)
        except (TlsConfigError, TicketKeyError) as error:
            log.error("TLS reload failed, keeping the previous certificates: %s", error)
            return False
        log.info("TLS certificates reloaded from %s", self.files.certificate)
        return True


class _GuardedProtocol(asyncio.Protocol):
    """Sits between the (TLS) transport and aiohttp's request handler: closes the connection if
    the first request's headers do not arrive within ``header_timeout``, refuses a revoked
    client certificate before any request is read, and frees the guard's slot on close."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        header_timeout: float,
        ticket: Ticket,
        peer: str,
        revocations: Revocations | None,
    ) -> None:
        self._inner = inner
        self._header_timeout = header_timeout
        self._ticket = ticket
        self._peer = peer
        self._revocations = revocations
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scanned = 0
        self._tail = b""
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if self._revocations is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            serial = self._revocations.revoked_serial(ssl_object)
            if serial is not None:
                # Before the request handler exists: nothing this client sent is ever read.
                log_refused(self._peer, serial)
                self._refused = True
                typing.cast(asyncio.Transport, transport).abort()
                return
            if ssl_object is not None and ssl_object.getpeercert():
                self._revocations.watch(self, ssl_object, self._revoked_since)
        self._timer = asyncio.get_running_loop().call_later(
            self._header_timeout, self._headers_too_slow
        )
        self._inner.connection_made(transport)

    def _revoked_since(self, serial: int) -> None:
        """The certificate of this open connection was revoked: end it like any close."""
        log_refused(self._peer, serial)
        if self._transport is not None:
            self._transport.close()

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self._transport is not None:
            log.info(
                "closing connection from %s: no complete request headers within %.1f s",
                self._peer,
                self._header_timeout,
            )
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._timer is not None:
            window = self._tail + data
            if HEADER_END in window or self._scanned > HEADER_SCAN_LIMIT:
                self._timer.cancel()
                self._timer = None
            else:
                self._scanned += len(data)
                self._tail = window[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ticket.release()
        if self._revocations is not None:
            self._revocations.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._refused:
            return  # the request handler never saw this connection
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _NoClientHello(TimeoutError):
    reason = "no-client-hello"


def log_handshake_failed(peer: str, error: BaseException) -> None:
    """One security-log line per failed TLS handshake (fail2ban matches it), every listener."""
    reason = getattr(error, "reason", None) or type(error).__name__
    security_log.warning("pbxfront security: tls-handshake-failed from %s reason=%s", peer, reason)


class TlsCounters:
    """Counts one listener's TLS handshakes (resumed or not) and failures into the metrics."""

    def __init__(self, metrics: Metrics, listener: str) -> None:
        self._handshakes = {
            True: metrics.tls_handshakes.labels(listener, "yes"),
            False: metrics.tls_handshakes.labels(listener, "no"),
        }
        self._failures = metrics.tls_failures.labels(listener)

    def completed(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        resumed = bool(getattr(ssl_object, "session_reused", False))
        self._handshakes[resumed].inc()

    def failed(self) -> None:
        self._failures.inc()


async def _readable(sock: socket.socket, seconds: float) -> bool:
    """Whether ``sock`` has something to read (or EOF) within ``seconds``."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        async with asyncio.timeout(seconds):
            await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(sock.fileno())
    return True


async def start_connection(
    make_protocol: Callable[[], asyncio.Protocol],
    connection: socket.socket,
    peer: str,
    holder: ContextHolder | None,
    handshake_timeout: float,
    observer: TlsCounters | None = None,
) -> asyncio.BaseTransport | None:
    """Hand an accepted socket to the event loop, through TLS if ``holder`` is set.

    Nothing is allocated for TLS before the client's first byte (its ClientHello) arrives: the
    TLS machinery takes tens of kB per connection, which thousands of silent connections would
    otherwise hold. ``handshake_timeout`` bounds that wait and the handshake together. A
    failure is logged (security log) and the socket closed; then the result is None.
    """
    loop = asyncio.get_running_loop()
    if holder is None:
        transport, _ = await loop.connect_accepted_socket(make_protocol, connection)
        return transport
    started = loop.time()
    try:
        if not await _readable(connection, handshake_timeout):
            raise _NoClientHello
        remaining = max(0.1, handshake_timeout - (loop.time() - started))
        transport, _ = await loop.connect_accepted_socket(
            make_protocol,
            connection,
            ssl=holder.context,
            ssl_handshake_timeout=remaining,
        )
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as error:
        if observer is not None:
            observer.failed()
        log_handshake_failed(peer, error)
        connection.close()
        return None
    if observer is not None:
        observer.completed(transport)
    return transport


class GuardedSite(web.BaseSite):
    """An aiohttp site on a ready socket, accepting through the core connection guard."""

    __slots__ = (
        "_guard",
        "_handshake_timeout",
        "_header_timeout",
        "_holder",
        "_observer",
        "_revocations",
        "_sock",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        holder: ContextHolder | None,
        *,
        handshake_timeout: float,
        header_timeout: float,
        guard: ConnectionGuard,
        revocations: Revocations | None = None,
        backlog: int = 1024,
        observer: TlsCounters | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._observer = observer
        self._sock = sock
        self._holder = holder
        self._handshake_timeout = handshake_timeout
        self._header_timeout = header_timeout
        self._guard = guard
        self._revocations = revocations

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        scheme = "https" if self._holder is not None else "http"
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._sock.listen(self._backlog)
        self._server = typing.cast(
            asyncio.AbstractServer, AcceptLoop(self._sock, self._guard, self._serve)
        )

    async def _serve(self, connection: socket.socket, peer: object, ticket: Ticket) -> None:
        server = self._runner.server
        assert server is not None
        name = peer_text(peer)

        def factory() -> asyncio.Protocol:
            revocations = self._revocations if self._holder is not None else None
            return _GuardedProtocol(server(), self._header_timeout, ticket, name, revocations)

        transport = await start_connection(
            factory, connection, name, self._holder, self._handshake_timeout, self._observer
        )
        if transport is None:
            ticket.release()


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound (not yet listening) TCP socket; ``reuse_port`` lets several workers share a port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
