"""TLS for listeners: server contexts that reload on SIGHUP, and a guarded accept path.

Python's ``ssl`` has no nginx-style ``optional_no_ca``: on a listener that requests client
certificates, a certificate from an unknown CA fails the handshake. A listener therefore either
requests certificates (devices are then proven or refused at the handshake) or does not (every
caller is claimed or anonymous); a Frontend typically offers both ports.

Connections are accepted as plain TCP and upgraded with ``loop.start_tls``. That costs nothing
measurable and gives what ``create_server(ssl=…)`` hides: failed handshakes are logged with the
peer address and reason, the handshake has a deadline, the context can be swapped for new
connections while open ones keep theirs, and slow request headers are cut off.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

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


def build_server_context(files: TlsFiles) -> ssl.SSLContext:
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
    return context


class ContextHolder:
    """The current server context of one listener; ``reload()`` swaps it for new connections."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = build_server_context(files)

    def reload(self) -> bool:
        """Rebuild from the files; on error keep the old context and log why."""
        try:
            self.context = build_server_context(self.files)
        except TlsConfigError as error:
            log.error("TLS reload failed, keeping the previous certificates: %s", error)
            return False
        log.info("TLS certificates reloaded from %s", self.files.certificate)
        return True


class _GuardedProtocol(asyncio.Protocol):
    """Sits between the transport and aiohttp's request handler.

    Before the handshake it holds the raw TCP transport; afterwards it forwards everything to the
    HTTP protocol, buffering what arrives before that protocol is connected, and closes the
    connection if the first request's headers do not arrive within ``header_timeout``.
    """

    def __init__(
        self,
        make_protocol: Callable[[], asyncio.Protocol],
        holder: ContextHolder | None,
        handshake_timeout: float,
        header_timeout: float,
    ) -> None:
        self._make_protocol = make_protocol
        self._holder = holder
        self._handshake_timeout = handshake_timeout
        self._header_timeout = header_timeout
        self._inner: asyncio.Protocol | None = None
        self._inner_connected = False
        self._pending: list[bytes] = []
        self._pending_eof = False
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scanned = 0
        self._tail = b""
        self._peer = "-"
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._inner = self._make_protocol()
        if self._holder is None:
            self._attach(transport)
            return
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, transport: asyncio.Transport) -> None:
        assert self._holder is not None
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(
                transport,
                self,
                self._holder.context,
                server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", None) or type(error).__name__
            security_log.warning(
                "pbxfront security: tls-handshake-failed from %s reason=%s", self._peer, reason
            )
            transport.abort()
            return
        if tls_transport is None:  # pragma: no cover - closed during handshake
            transport.abort()
            return
        self._attach(tls_transport)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        assert self._inner is not None
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(
            self._header_timeout, self._headers_too_slow
        )
        self._inner.connection_made(transport)
        self._inner_connected = True
        for chunk in self._pending:
            self._feed(chunk)
        self._pending.clear()
        if self._pending_eof:
            self._inner.eof_received()

    def _headers_too_slow(self) -> None:
        self._timer = None
        log.info(
            "closing connection from %s: no complete request headers within %.1f s",
            self._peer,
            self._header_timeout,
        )
        if self._transport is not None:
            self._transport.close()

    def _feed(self, data: bytes) -> None:
        if self._timer is not None:
            window = self._tail + data
            if HEADER_END in window or self._scanned > HEADER_SCAN_LIMIT:
                self._timer.cancel()
                self._timer = None
            else:
                self._scanned += len(data)
                self._tail = window[-3:]
        assert self._inner is not None
        self._inner.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._inner_connected:
            self._feed(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool | None:
        if self._inner_connected and self._inner is not None:
            return self._inner.eof_received()
        self._pending_eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inner_connected and self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner_connected and self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner_connected and self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """An aiohttp site on a ready socket, accepting through :class:`_GuardedProtocol`."""

    __slots__ = ("_handshake_timeout", "_header_timeout", "_holder", "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        holder: ContextHolder | None,
        *,
        handshake_timeout: float,
        header_timeout: float,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._holder = holder
        self._handshake_timeout = handshake_timeout
        self._header_timeout = header_timeout

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        scheme = "https" if self._holder is not None else "http"
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def factory() -> asyncio.Protocol:
            return _GuardedProtocol(
                server, self._holder, self._handshake_timeout, self._header_timeout
            )

        self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)


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
