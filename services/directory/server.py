"""The LDAP server: listeners, connections, and the four operations a phone directory needs.

The connection keeps framing, limits and result codes; what a bind proves and what a search
finds is the backend's (``backend.CustomerDirectories``).

One :class:`DirectoryServer` per process serves every listener naming "directory" (the runner's
:class:`~services.core.runner.StreamService`); all of them share one in-memory cache. A
connection reads one message at a time and answers it before reading the next, so an abandon
always arrives after the operation it names has been answered and has nothing left to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
import typing
from collections.abc import AsyncGenerator
from functools import partial

import asyncpg

from services.core import errors
from services.core.auth import HashGate, VerifiedCache
from services.core.authguard import AuthGuard, failure_limiter
from services.core.config import DirectorySettings, LimitSettings, ListenerSettings
from services.core.db import DatabaseUnavailable
from services.core.guard import AcceptLoop, ConnectionGuard, Ticket, peer_address, peer_text
from services.core.identity import printable
from services.core.metrics import Metrics
from services.core.tls import ContextHolder, start_connection
from services.directory import protocol as ldap
from services.directory.backend import (
    Backend,
    CustomerDirectories,
    Identity,
    Refusal,
    bind_target,
)
from services.directory.ber import ProtocolError, header_length
from services.directory.cache import DirectoryCache
from services.directory.filters import Filter, canonical
from services.directory.index import CustomerDirectory, Entry
from services.directory.protocol import Op, ResultCode

log = logging.getLogger(__name__)
security_log = logging.getLogger("pbxfront.security")

RESPONSE_FOR: dict[int, Op] = {
    Op.BIND_REQUEST: Op.BIND_RESPONSE,
    Op.SEARCH_REQUEST: Op.SEARCH_RESULT_DONE,
    Op.EXTENDED_REQUEST: Op.EXTENDED_RESPONSE,
    **ldap.REFUSED_OPERATIONS,
}
# Entries encoded before they are written out together.
_BATCH = 64


def select(
    entry: Entry, requested: tuple[str, ...], types_only: bool
) -> list[tuple[str, list[str]]]:
    """The attributes a search asked for (RFC 4511 §4.5.1.8): none named or ``*`` = all user
    attributes, ``1.1`` alone = none, otherwise the named ones."""
    names = {canonical(name) for name in requested}
    every = not requested or "*" in names or "+" in names
    return [
        (shown, [] if types_only else values)
        for shown, name, values in entry.attributes
        if every or name in names
    ]


class DirectoryServer:
    """The directory service on any number of listeners in this process."""

    def __init__(
        self,
        settings: DirectorySettings,
        metrics: Metrics | None = None,
        limits: LimitSettings | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        limits = limits if limits is not None else LimitSettings()
        # Failed binds per address (directory.bind_failure_*) and per bind name, with the
        # node's rule for accounts (limits.auth_account_*: an account under attack stays
        # usable from the addresses it binds from).
        self.limiter = failure_limiter(
            limits,
            address_burst=settings.bind_failure_burst,
            address_per_second=settings.bind_failure_per_second,
        )
        # argon2 checks of directory-reader binds wait their turn with every other check of
        # the node (limits.hash_concurrency, limits.hash_queue).
        guard = (
            metrics.shared("auth_guard", partial(AuthGuard, limits))
            if metrics is not None
            else AuthGuard(limits)
        )
        self.hashing: HashGate = guard.hashing
        self.verified = VerifiedCache()
        self._pool: asyncpg.Pool | None = None
        self._cache: DirectoryCache | None = None
        self._backend: CustomerDirectories | None = None
        self._listeners: list[_Listener] = []

    def count(self, operation: str, code: ResultCode) -> None:
        """One bind or search answered, by result (``success``, ``invalid_credentials`` …)."""
        if self.metrics is None:
            return
        counter = self.metrics.ldap_binds if operation == "bind" else self.metrics.ldap_searches
        counter.labels(code.name.lower()).inc()

    @property
    def cache(self) -> DirectoryCache:
        assert self._cache is not None, "the directory has not been started"
        return self._cache

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "the directory has not been started"
        return self._backend

    async def start(
        self,
        sock: socket.socket,
        tls: ContextHolder | None,
        pool: asyncpg.Pool | None,
        listener: ListenerSettings,
    ) -> None:
        if pool is None:
            raise RuntimeError("the directory service needs PostgreSQL")
        if self._cache is None:
            self._pool = pool
            self._cache = DirectoryCache(
                pool, self.settings.number_format, preload=self.settings.preload
            )
            self._cache.start()
            self._backend = CustomerDirectories(self._cache, pool, self.verified, self.hashing)
        port = sock.getsockname()[1]
        accepting = _Listener(self, sock, tls, listener.handshake_timeout, f"directory:{port}")
        accepting.start()
        self._listeners.append(accepting)

    async def close(self) -> None:
        for listener in self._listeners:
            listener.stop_accepting()
        for listener in self._listeners:
            await listener.close()
        self._listeners.clear()
        if self._cache is not None:
            await self._cache.close()


class _Listener:
    """Accepts connections on one socket through the core connection guard; TLS through the
    runner's context holder so a SIGHUP reload applies to new connections."""

    def __init__(
        self,
        server: DirectoryServer,
        sock: socket.socket,
        tls: ContextHolder | None,
        handshake_timeout: float,
        name: str,
    ) -> None:
        self._server = server
        self._sock = sock
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        settings = server.settings
        self.guard = ConnectionGuard(
            name,
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_address,
        )
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._accepting: AcceptLoop | None = None

    def start(self) -> None:
        self._sock.listen(1024)
        self._accepting = AcceptLoop(self._sock, self.guard, self._serve)

    async def _serve(self, raw: socket.socket, peer: object, ticket: Ticket) -> None:
        try:
            await self._session(raw, peer_address(peer), peer_text(peer))
        finally:
            ticket.release()

    async def _session(self, raw: socket.socket, address: str, peer: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = await start_connection(
            lambda: protocol, raw, peer, self._tls, self._handshake_timeout
        )
        if transport is None:
            return
        writer = asyncio.StreamWriter(
            typing.cast(asyncio.WriteTransport, transport), protocol, reader, loop
        )
        connection = _Connection(self._server, reader, writer, address, tls=self._tls is not None)
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = connection
        try:
            await connection.run()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            # A bug must not pass silently, nor take more than this one connection with it.
            log.exception("directory: connection from %s failed", address)
        finally:
            if task is not None:
                self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()

    def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.stop_accepting()
        else:
            self._sock.close()

    async def close(self) -> None:
        """Close every connection and let its task finish (never cancelled mid-query)."""
        if self._accepting is None:
            return
        await self._accepting.wait_closed()
        for connection in list(self._connections.values()):
            connection.hang_up()
        tasks = list(self._accepting.tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=10.0)
            for task in pending:  # a handshake that never ends
                task.cancel()


class _TooLarge(Exception):
    pass


class _NoBind(Exception):
    """An unbound connection reached directory.bind_timeout."""


class _Connection:
    """One client: reads a message, answers it, reads the next."""

    def __init__(
        self,
        server: DirectoryServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        *,
        tls: bool,
    ) -> None:
        self.server = server
        self.settings = server.settings
        self.reader = reader
        self.writer = writer
        self.address = address
        self.tls = tls
        self.identity: Identity | None = None
        # While unbound, the connection must bind by this monotonic time (directory.bind_timeout)
        # or be closed: idle strangers cannot hold connections for the whole idle_timeout.
        self.bind_deadline: float | None = time.monotonic() + self.settings.bind_timeout

    def hang_up(self) -> None:
        self.writer.close()

    async def run(self) -> None:
        while True:
            try:
                data = await self._read()
            except asyncio.IncompleteReadError:
                return
            except _NoBind:
                log.info(
                    "directory: closing a connection from %s: no successful bind within %g s",
                    self.address,
                    self.settings.bind_timeout,
                )
                return
            except TimeoutError:
                log.info("directory: closing an idle or slow connection from %s", self.address)
                return
            except _TooLarge:
                await self._disconnect(
                    ResultCode.ADMIN_LIMIT_EXCEEDED,
                    f"message larger than {self.settings.max_message_bytes} bytes",
                )
                return
            except ProtocolError as error:
                await self._disconnect(ResultCode.PROTOCOL_ERROR, str(error))
                return
            if data is None:
                return
            try:
                message = ldap.decode_message(data, self.settings.max_filter_depth)
            except ProtocolError as error:
                await self._disconnect(ResultCode.PROTOCOL_ERROR, str(error))
                return
            if not await self._handle(message):
                return

    async def _read(self) -> bytes | None:
        """One whole message: the first byte may take idle_timeout (unbound: until the bind
        deadline), the rest read_timeout."""
        wait = self.settings.idle_timeout
        if self.bind_deadline is not None:
            left = self.bind_deadline - time.monotonic()
            if left <= 0:
                raise _NoBind
            if left < wait:
                try:
                    return await self._read_within(left)
                except TimeoutError:
                    raise _NoBind from None
        return await self._read_within(wait)

    async def _read_within(self, wait: float) -> bytes | None:
        first = await asyncio.wait_for(self.reader.read(1), wait)
        if not first:
            return None
        async with asyncio.timeout(self.settings.read_timeout):
            data = bytearray(first)
            while (total := header_length(bytes(data))) is None:
                data += await self.reader.readexactly(1)
            if total > self.settings.max_message_bytes:
                raise _TooLarge
            data += await self.reader.readexactly(total - len(data))
        return bytes(data)

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(self.settings.read_timeout):
            await self.writer.drain()

    async def _disconnect(self, code: ResultCode, text: str) -> None:
        log.info(
            "directory: disconnecting %s: %s (%s)", self.address, printable(text, 120), code.name
        )
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await self._send(ldap.notice_of_disconnection(code, text))

    async def _handle(self, message: ldap.Message) -> bool:
        """Answer one message; False ends the session."""
        mid = message.message_id
        request = message.request
        if message.error is not None or request is None:
            response = RESPONSE_FOR.get(message.op)
            if response is None:
                # A malformed unbind or abandon has no response to carry the error.
                return message.op != Op.UNBIND_REQUEST
            error = message.error or ldap.OperationError(ResultCode.PROTOCOL_ERROR, "malformed")
            await self._send(ldap.result(mid, response, error.code, str(error)))
            return True
        if isinstance(request, ldap.UnbindRequest):
            return False
        if isinstance(request, ldap.AbandonRequest):
            return True  # answered already: see the module docstring
        critical = [control.oid for control in message.controls if control.critical]
        if critical:
            await self._send(
                ldap.result(
                    mid,
                    RESPONSE_FOR.get(message.op, Op.EXTENDED_RESPONSE),
                    ResultCode.UNAVAILABLE_CRITICAL_EXTENSION,
                    f"control {printable(critical[0], 80)} is not supported",
                )
            )
            return True
        try:
            if isinstance(request, ldap.BindRequest):
                await self._bind(mid, request)
            elif isinstance(request, ldap.SearchRequest):
                await self._search(mid, request)
            elif isinstance(request, ldap.ExtendedRequest):
                await self._extended(mid, request)
            else:
                await self._send(
                    ldap.result(
                        mid,
                        request.response,
                        ResultCode.UNWILLING_TO_PERFORM,
                        "this directory is read-only",
                    )
                )
        except (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("directory: database unavailable: %s", error)
            response = RESPONSE_FOR.get(message.op, Op.EXTENDED_RESPONSE)
            await self._send(
                ldap.result(mid, response, ResultCode.UNAVAILABLE, "directory unavailable")
            )
        return True

    # --- bind ------------------------------------------------------------------------------

    async def _bind(self, mid: int, request: ldap.BindRequest) -> None:
        if self.identity is not None:
            self.bind_deadline = time.monotonic() + self.settings.bind_timeout
        self.identity = None
        code, text = await self._bind_outcome(request)
        if code is ResultCode.SUCCESS:
            self.bind_deadline = None
        self.server.count("bind", code)
        await self._send(ldap.result(mid, Op.BIND_RESPONSE, code, text))

    async def _bind_outcome(self, request: ldap.BindRequest) -> tuple[ResultCode, str]:
        """Check the bind's form, then its rate limit, then the backend; sets the identity."""
        refused = _bind_form_refusal(request)
        if refused is not None:
            return refused
        limiter = self.server.limiter
        target = bind_target(request.name)
        account = f"{target[0]}:{target[1].lower()}" if target is not None else None
        refusal = limiter.check(self.address, account)
        if refusal is not None:
            security_log.warning(
                "pbxfront security: ldap-bind-refused from %s name=%s reason=rate-limited scope=%s",
                self.address,
                printable(request.name, 80),
                refusal.scope,
            )
            return ResultCode.UNWILLING_TO_PERFORM, (
                f"too many failed binds from this {refusal.scope}; retry in {refusal.retry_after} s"
            )
        try:
            identity = await self.server.backend.bind(request.name, request.password or "")
        except errors.Busy as busy:
            return ResultCode.BUSY, str(busy)
        if identity is None:
            limiter.failed(self.address, account)
            security_log.warning(
                "pbxfront security: ldap-bind-failed from %s name=%s",
                self.address,
                printable(request.name, 80),
            )
            return ResultCode.INVALID_CREDENTIALS, "invalid credentials"
        if account is not None:
            limiter.succeeded(self.address, account)
        self.identity = identity
        return ResultCode.SUCCESS, ""

    # --- extended --------------------------------------------------------------------------

    async def _extended(self, mid: int, request: ldap.ExtendedRequest) -> None:
        if request.name == ldap.WHO_AM_I:
            value = f"dn:{self.identity.dn}" if self.identity is not None else ""
            await self._send(
                ldap.extended_response(mid, ResultCode.SUCCESS, value=value.encode("utf-8"))
            )
            return
        if request.name == ldap.START_TLS:
            text = "TLS is already active" if self.tls else "StartTLS is not offered: use LDAPS"
            code = ResultCode.OPERATIONS_ERROR if self.tls else ResultCode.PROTOCOL_ERROR
            await self._send(ldap.extended_response(mid, code, text, name=ldap.START_TLS))
            return
        await self._send(
            ldap.extended_response(
                mid,
                ResultCode.PROTOCOL_ERROR,
                f"unknown extended operation {printable(request.name, 80)}",
            )
        )

    # --- search ----------------------------------------------------------------------------

    async def _done(self, mid: int, code: ResultCode, text: str = "", matched: str = "") -> None:
        self.server.count("search", code)
        await self._send(ldap.result(mid, Op.SEARCH_RESULT_DONE, code, text, matched))

    async def _search(self, mid: int, request: ldap.SearchRequest) -> None:
        outcome = await self.server.backend.search(self.identity, request)
        if isinstance(outcome, Refusal):
            await self._done(mid, outcome.code, outcome.text, outcome.matched)
        else:
            await self._answer(mid, request, outcome)

    async def _answer(
        self, mid: int, request: ldap.SearchRequest, entries: AsyncGenerator[Entry, None]
    ) -> None:
        """Send matching entries up to the size and time limits, then the result."""
        limits = [self.settings.size_limit] + ([request.size_limit] if request.size_limit else [])
        size_limit = min(limits)
        seconds = min(
            [self.settings.time_limit] + ([request.time_limit] if request.time_limit else [])
        )
        deadline = time.monotonic() + seconds
        code = ResultCode.SUCCESS
        text = ""
        sent = 0
        batch: list[bytes] = []
        # Closed at once when a limit stops the search early, not whenever it is collected.
        async with contextlib.aclosing(entries):
            async for entry in entries:
                if sent >= size_limit:
                    code, text = ResultCode.SIZE_LIMIT_EXCEEDED, f"more than {size_limit} entries"
                    break
                batch.append(
                    ldap.search_entry(
                        mid, entry.dn, select(entry, request.attributes, request.types_only)
                    )
                )
                sent += 1
                if len(batch) >= _BATCH:
                    await self._send(b"".join(batch))
                    batch.clear()
                if time.monotonic() > deadline:
                    code, text = ResultCode.TIME_LIMIT_EXCEEDED, f"search took over {seconds:g} s"
                    break
        batch.append(ldap.result(mid, Op.SEARCH_RESULT_DONE, code, text))
        self.server.count("search", code)
        await self._send(b"".join(batch))


def search_directory(directory: CustomerDirectory, node: Filter, limit: int) -> list[Entry]:
    """Entries a phone would get for ``node`` at the customer's base (scope sub), for the CLI."""
    found: list[Entry] = []
    for entry in directory.search(node, include_base=True):
        if len(found) >= limit:
            break
        found.append(entry)
    return found


def _bind_form_refusal(request: ldap.BindRequest) -> tuple[ResultCode, str] | None:
    """Why a bind is refused before any credential is looked at (version, SASL, anonymous,
    unauthenticated), or None."""
    if request.version != 3:
        return ResultCode.PROTOCOL_ERROR, "only LDAPv3 is supported"
    if request.password is None:
        return (
            ResultCode.AUTH_METHOD_NOT_SUPPORTED,
            "SASL is not supported: use a simple bind with the customer id",
        )
    if not request.name and not request.password:
        return (
            ResultCode.INAPPROPRIATE_AUTHENTICATION,
            "anonymous bind refused: bind as the customer id with its registration password",
        )
    if not request.password:
        # RFC 4513 §5.1.2: a name without a password is an "unauthenticated" bind.
        return ResultCode.UNWILLING_TO_PERFORM, "a bind needs a password"
    return None
